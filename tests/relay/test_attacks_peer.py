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
