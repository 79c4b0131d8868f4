"""The size budget end to end (docs/protocol.md, "Size budget"): an envelope a node
acknowledges always fits every frame that carries it, across nodes and through the
outbox; what cannot be carried is refused at send (``too_large``), never acknowledged
and lost; an outbox entry that can never be sent is kept aside and bounced, not dropped.
"""

from __future__ import annotations

import os

import msgpack
import trio
from relay_harness import (
    deliveries,
    list_of,
    publish_list,
    published,
    session,
)

from relay.protocol import DEFAULT_LIMITS, write_frame
from relay.protocol.codec import ENVELOPE_OVERHEAD
from relay.protocol.frames import (
    Ack,
    Copy,
    Error,
    Forward,
    Ok,
    Recipient,
    Send,
    Sent,
    Sync,
    Synced,
)
from relay.services.outbox import DEAD_LETTER

MAX_ENV = DEFAULT_LIMITS.max_envelope


def test_the_budget_leaves_room_for_every_carrier() -> None:
    limits = DEFAULT_LIMITS
    assert limits.max_envelope + ENVELOPE_OVERHEAD <= limits.max_frame
    assert limits.max_peer_frame > limits.max_frame
    # the largest forward built from the largest send fits a peer frame
    big = [Copy(device_id=i, body=b"x" * (MAX_ENV - 64)) for i in range(4)]
    send = Send(id=1, msg_id=os.urandom(16), recipients=[
        Recipient(user_id="a" * 52, devices_version=1, copies=big)])
    fwd = Forward(id=2**31, msg_id=send.msg_id, sender_user="b" * 52, sender_device=2**31,
                  ts=2**62, recipients=send.recipients)
    assert len(write_frame(send)) <= limits.max_frame
    assert len(write_frame(fwd)) <= limits.max_peer_frame


async def _sync(client) -> None:
    await client.send(Sync(id=99))
    assert isinstance(await client.recv(), Synced)


async def test_maximum_envelope_across_nodes_is_delivered(cluster2) -> None:
    with trio.fail_after(20):
        alice, bob = await published(cluster2, "n1", "n2")
        body = os.urandom(MAX_ENV)
        mid = os.urandom(16)
        async with session(cluster2.url("n1"), alice) as a:
            sent = await a.request(Send(id=3, msg_id=mid, recipients=[bob.recipient(body)]))
            assert sent == Sent(id=3, status="stored")
        async with session(cluster2.url("n2"), bob) as b:
            await b.send(Sync(id=5))
            (got,) = await deliveries(b, 1)
            assert got.envelope.msg_id == mid and got.envelope.body == body
            await b.send(Ack(id=0, seq=got.seq))


async def test_four_maximum_envelopes_in_one_send_across_nodes(cluster3) -> None:
    """A send frame near max_frame: its forward (plus headers) still fits the peer limit."""
    with trio.fail_after(20):
        alice, bob = await published(cluster3, "n1", "n2")
        laptops = [bob.companion(i) for i in (1, 2, 3)]
        assert isinstance(await publish_list(cluster3.url("n2"), list_of([bob, *laptops], 2)), Ok)
        bodies = [os.urandom(MAX_ENV - 200) for _ in range(4)]
        copies = [Copy(device_id=d.device_id, body=b) for d, b in zip([bob, *laptops], bodies,
                                                                        strict=True)]
        mid = os.urandom(16)
        async with session(cluster3.url("n1"), alice) as a:
            sent = await a.request(Send(id=3, msg_id=mid, recipients=[
                Recipient(user_id=bob.user_id, devices_version=2, copies=copies)]))
            assert sent == Sent(id=3, status="stored")
        async with session(cluster3.url("n2"), laptops[2]) as b:
            await b.send(Sync(id=5))
            got = [d for d in await deliveries(b, 2) if d.envelope.kind == "olm"]
            assert [d.envelope.body for d in got] == [bodies[3]]  # after its list notice


async def test_an_envelope_above_the_budget_is_refused_at_send(cluster2) -> None:
    with trio.fail_after(20):
        alice, bob = await published(cluster2, "n1", "n2")
        async with session(cluster2.url("n1"), alice) as a:
            answer = await a.request(Send(id=3, msg_id=os.urandom(16),
                                          recipients=[bob.recipient(b"x" * (MAX_ENV + 1))]))
            assert isinstance(answer, Error) and answer.code == "too_large"
            assert str(MAX_ENV) in answer.message
        assert await cluster2.storages["n2"].queue_length(bob.user_id, 0) == 0
        assert await cluster2.storages["n1"].outbox_list() == []


async def test_maximum_envelopes_through_the_outbox_are_delivered(cluster2) -> None:
    """The original bug: a send near max_frame to a down home was answered `queued`,
    its forward (larger than max_frame) was read back with the client frame limit and
    dropped by the outbox as "corrupt"."""
    with trio.fail_after(30):
        alice, bob = await published(cluster2, "n1", "n2")
        laptops = [bob.companion(i) for i in (1, 2, 3)]
        assert isinstance(await publish_list(cluster2.url("n2"), list_of([bob, *laptops], 2)), Ok)
        cluster2.stop("n2")
        ids = [os.urandom(16) for _ in range(3)]

        def send(i: int, bodies: list[bytes]) -> Send:
            copies = [Copy(device_id=d, body=b) for d, b in enumerate(bodies)]
            return Send(id=3 + i, msg_id=ids[i], recipients=[
                Recipient(user_id=bob.user_id, devices_version=2, copies=copies)])

        # bodies that make each send frame 8 bytes short of max_frame: its forward is larger
        probe = len(write_frame(send(0, [b"x" * MAX_ENV] * 4)))
        short = probe - (DEFAULT_LIMITS.max_frame - 8)
        sends = [[os.urandom(MAX_ENV) for _ in range(3)] + [os.urandom(MAX_ENV - short)]
                 for _ in ids]
        async with session(cluster2.url("n1"), alice) as a:
            for i, bodies in enumerate(sends):
                frame = send(i, bodies)
                assert len(write_frame(frame)) == DEFAULT_LIMITS.max_frame - 8
                assert await a.request(frame) == Sent(id=3 + i, status="queued")
        await cluster2.start("n2")
        async with session(cluster2.url("n2"), laptops[1]) as b:
            await b.send(Sync(id=5))
            got = [d for d in await deliveries(b, 4) if d.envelope.kind == "olm"]
            assert [d.envelope.msg_id for d in got] == ids
            assert [d.envelope.body for d in got] == [bodies[2] for bodies in sends]
        assert await cluster2.storages["n1"].outbox_list() == []


async def test_an_unreadable_outbox_entry_is_kept_aside_and_bounced(cluster2_n1_only) -> None:
    cluster = cluster2_n1_only
    with trio.fail_after(20):
        (alice,) = await published(cluster, "n1")
        storage = cluster.storages["n1"]
        mid = os.urandom(16)
        # a stored forward that no longer parses (a field of the wrong type), as an older
        # or damaged node could have left it: its sender can still be read
        junk = msgpack.packb({"t": "forward", "id": 0, "msg_id": mid,
                              "sender_user": alice.user_id, "sender_device": 0, "ts": "bad",
                              "recipients": []}, use_bin_type=True)
        await storage.outbox_put("n2", junk)
        cluster.stop("n1")  # the outbox finds the entry at start, as after a restart
        await cluster.start("n1")
        await cluster.start("n2")
        async with session(cluster.url("n1"), alice) as a:
            await a.send(Sync(id=2))
            got = await deliveries(a, 1)
        assert got[0].envelope.kind == "bounce" and got[0].envelope.msg_id == mid
        assert "could not forward" in msgpack.unpackb(got[0].envelope.body)["message"]
        kept = await storage.outbox_list(DEAD_LETTER)
        assert [e.payload for e in kept] == [junk]
        assert await storage.outbox_list("n2") == []
