"""Attacks by a hostile peer node (valid node keys) on another node's message path."""

from __future__ import annotations

import dataclasses
import os

import msgpack
import trio
from relay_harness import Cluster, device_homed_at, make_configs, peer_session, publish

from relay.protocol.frames import (
    BounceBack,
    Envelope,
    Error,
    ForwardBatch,
    Ok,
    Ping,
    Results,
)
from relay.protocol.stored import encode_bounce_body


def _bounce(sender: str, recipient: str, *, msg_id: bytes | None = None, body: bytes | None = None,
            sender_device: int = 0) -> BounceBack:
    body = body if body is not None else encode_bounce_body("too_large", "x", recipient)
    return BounceBack(id=0, envelope=Envelope(
        msg_id=msg_id if msg_id is not None else os.urandom(16), sender_user=sender,
        sender_device=sender_device, ts=1, kind="bounce", body=body))


async def test_a_peer_bounce_with_an_envelope_above_the_budget_is_refused(cluster2) -> None:
    """A bounce envelope must fit the size budget like any other: else it is stored in a
    device queue although no ``deliver`` frame can carry it."""
    cluster = cluster2
    with trio.fail_after(20):
        alice = device_homed_at(cluster.ring, "n1")
        bob = device_homed_at(cluster.ring, "n2")
        await publish(cluster.url("n1"), alice)
        # a body far above max_envelope (and max_frame), still inside the peer frame limit
        body = _wide_body(bob.user_id, cluster.config("n1").max_frame - 2000)
        async with peer_session(cluster, "n2", "n1") as p:
            answer = await p.request(ForwardBatch(id=3, items=[_bounce(alice.user_id, bob.user_id,
                                                                         body=body)]))
            assert isinstance(answer, Results)
            (item,) = answer.items
            assert isinstance(item, Error) and item.code in ("too_large", "bad_request"), item
            alone = await p.request(dataclasses.replace(
                _bounce(alice.user_id, bob.user_id, body=body), id=4))
            assert isinstance(alone, Error) and alone.code in ("too_large", "bad_request"), alone
        assert await cluster.storages["n1"].read_queue(alice.user_id, 0) == []


def _wide_body(user_id: str, size: int) -> bytes:
    """A valid bounce body of about ``size`` bytes (strings are limited to 64 KiB, so
    the bulk sits in an extra field, which the decoder ignores)."""
    return msgpack.packb({"code": "too_large", "message": "m", "user_id": user_id,
                          "pad": b"p" * size}, use_bin_type=True)


async def test_a_malformed_peer_bounce_is_refused_not_a_crash_of_the_link(cluster2) -> None:
    """A bounce with an oversized msg_id or an out-of-range device id is the peer's
    mistake (``bad_request``); the link stays up and the batch's other items stand."""
    cluster = cluster2
    with trio.fail_after(20):
        alice = device_homed_at(cluster.ring, "n1")
        bob = device_homed_at(cluster.ring, "n2")
        await publish(cluster.url("n1"), alice)
        async with peer_session(cluster, "n2", "n1") as p:
            items = [_bounce(alice.user_id, bob.user_id, msg_id=b"i" * 400),
                     _bounce(alice.user_id, bob.user_id, sender_device=2**63),
                     _bounce(alice.user_id, bob.user_id)]
            answer = await p.request(ForwardBatch(id=3, items=items))
            assert isinstance(answer, Results), answer
            codes = [a.code if isinstance(a, Error) else a.TYPE for a in answer.items]
            assert codes == ["bad_request", "bad_request", "ok"]
            assert await p.request(Ping(id=9)) == Ok(id=9)


def _fat_list(device, size: int):
    """A validly signed device list of about ``size`` bytes: a list body may carry
    fields the node does not know (strings of up to 256 characters in maps of up to 16
    entries), so a user can publish a list far above what its devices need (up to the
    64 KiB a list body may have)."""
    import time

    from relay.protocol.frames import SignedDeviceList
    from relay.protocol.identity import DEVICE_LIST_CONTEXT

    pad_map = {f"k{i}": "x" * 250 for i in range(15)}
    pads = {}
    left = size
    while left > 0:
        n = min(64, max(1, left // (15 * 256)))
        pads[f"pad{len(pads)}"] = [pad_map] * n
        left -= n * 15 * 256
    entry = device.entry()
    body = msgpack.packb({"user_id": device.user_id, "version": 1, "issued_at": int(time.time()),
                          "devices": [{"device_id": entry.device_id, "ed25519": entry.ed25519,
                                       "curve25519": entry.curve25519, "name": entry.name,
                                       "added_at": entry.added_at}], **pads}, use_bin_type=True)
    sig = device.account_key.sign(DEVICE_LIST_CONTEXT + body).signature
    return SignedDeviceList(body=body, signature=sig)


async def test_refusals_carrying_big_lists_do_not_break_the_peer_link(nursery) -> None:
    """One user makes ``stale_devices`` refusals as large as a device list can be (a list
    padded to ~60 KB, near the 64 KiB limit); a second user's pipelined sends to it,
    wrongly addressed, come back in ``results`` frames that would hold 40 such lists.
    Such a frame must not exceed the peer frame limit
    (which broke the link: every batch then went to the outbox, retried forever, and
    every later message between the two nodes queued behind it)."""
    from relay_harness import publish_list, session

    from relay.protocol.frames import Copy, Recipient, Send, Sent

    cluster = Cluster(nursery, make_configs(2))
    await cluster.start_all()
    with trio.fail_after(40):
        alice = device_homed_at(cluster.ring, "n1")
        mallory = device_homed_at(cluster.ring, "n2")
        bob = device_homed_at(cluster.ring, "n2")
        await publish(cluster.url("n1"), alice)
        await publish(cluster.url("n2"), bob)
        fat = _fat_list(mallory, 58_000)
        assert 50_000 < len(fat.body) <= 64 * 1024
        assert (await publish_list(cluster.url("n2"), fat)).TYPE == "ok"
        async with session(cluster.url("n1"), alice) as a:
            stale = [Send(id=10 + i, msg_id=os.urandom(16),
                          recipients=[Recipient(mallory.user_id, 1, [Copy(7, b"x")])])
                     for i in range(40)]
            for frame in stale:
                await a.send(frame)
            answers = {}
            while len(answers) < len(stale):
                f = await a.recv()
                answers[f.id] = f
            codes = [getattr(answers[f.id], "code", answers[f.id].TYPE) for f in stale]
            assert codes == ["stale_devices"] * 40, [answers[f.id] for f in stale]
            # the sender's home fetched the lists the destination left out
            assert all(answers[f.id].device_list == fat for f in stale)
            sent = await a.request(Send(id=20, msg_id=os.urandom(16),
                                        recipients=[bob.recipient()]))
            assert sent == Sent(id=20, status="stored"), sent
        assert await cluster.storages["n1"].outbox_list("n2") == []
        # one batch of 40 such items at once: its results are fitted to the frame limit
        from relay.protocol import DEFAULT_LIMITS, write_frame
        from relay.protocol.frames import Forward, ForwardBatch, Results
        from relay.services.messaging import LIST_OMITTED

        items = [Forward(id=0, msg_id=os.urandom(16), sender_user=alice.user_id,
                         sender_device=0, ts=1, recipients=[Recipient(mallory.user_id, 1,
                                                                      [Copy(7, b"x")])])
                 for _ in range(40)]
        async with peer_session(cluster, "n1", "n2") as p:
            results = await p.request(ForwardBatch(id=5, items=items))
        assert isinstance(results, Results) and len(results.items) == 40
        assert len(write_frame(results)) <= DEFAULT_LIMITS.max_peer_frame
        omitted = [r for r in results.items if r.device_list is None]
        assert omitted and all(r.message.endswith(LIST_OMITTED) for r in omitted)


def test_results_are_fitted_to_the_frame_limit() -> None:
    """The destination side on its own: big lists are left out until the frame fits."""
    from relay.protocol import write_frame
    from relay.protocol.frames import SignedDeviceList
    from relay.services.messaging import fit_results

    big = SignedDeviceList(body=b"b" * 300_000, signature=b"s" * 64)
    answers = [Error(id=0, code="stale_devices", message="m", user_id="u", device_list=big)
               for _ in range(5)] + [Ok(id=0)]
    fitted = fit_results(7, list(answers), 1_000_000)
    assert len(write_frame(fitted)) <= 1_000_000
    kept = [a.device_list is not None for a in fitted.items[:5]]
    assert kept.count(True) == 3 and [a.code for a in fitted.items[:5]] == ["stale_devices"] * 5
    assert fit_results(7, list(answers), 10_000_000).items == answers
