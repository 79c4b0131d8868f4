"""Batched federation: many parts per ``forward_batch``, one answer per part, and an
outbox that retries only what the destination did not store."""

from __future__ import annotations

import os

import msgpack
import trio
from relay_harness import Cluster, device_homed_at, make_configs, peer_session, publish, session

from relay.protocol.frames import (
    Ack,
    Copy,
    Deliver,
    Error,
    Forward,
    ForwardBatch,
    Ok,
    Recipient,
    Results,
    Send,
    Sent,
    Sync,
)
from storage.memory import MemoryStorage

SMALL, BIG = 200, 20_000  # bytes of body
CAPACITY = 30_000  # bytes n2 may hold: the list, the small ones and one big one


async def _outbox_ids(storage, dest: str) -> list[int]:
    return [e.outbox_id for e in await storage.outbox_list(dest)]


async def _wait_outbox(storage, dest: str, n: int) -> None:
    while len(await storage.outbox_list(dest)) != n:  # noqa: ASYNC110 - poll, caller's deadline
        await trio.sleep(0.01)


async def test_destination_full_half_way_answers_per_part_and_retries_the_rest(nursery) -> None:
    cluster = Cluster(nursery, make_configs(2))
    n2 = cluster.storages["n2"] = MemoryStorage(capacity_bytes=CAPACITY)
    await cluster.start_all()
    n1 = cluster.storages["n1"]
    with trio.fail_after(30):
        alice = device_homed_at(cluster.ring, "n1")
        bob = device_homed_at(cluster.ring, "n2")
        await publish(cluster.url("n1"), alice)
        await publish(cluster.url("n2"), bob)
        cluster.stop("n2")
        sizes = [SMALL, SMALL, BIG, BIG]
        ids = [os.urandom(16) for _ in sizes]
        async with session(cluster.url("n1"), alice) as a:
            for i, (mid, size) in enumerate(zip(ids, sizes, strict=True)):
                sent = await a.request(Send(id=10 + i, msg_id=mid,
                                            recipients=[bob.recipient(os.urandom(size))]))
                assert sent == Sent(id=10 + i, status="queued")
        entries = await _outbox_ids(n1, "n2")
        assert len(entries) == 4
        await cluster.start("n2")
        # one batch: ok, ok, ok, storage_full; only the last entry stays
        await _wait_outbox(n1, "n2", 1)
        assert await _outbox_ids(n1, "n2") == entries[3:]
        assert [i.seq for i in await n2.read_queue(bob.user_id, 0)] == [1, 2, 3]
        async with session(cluster.url("n2"), bob) as b:
            await b.send(Sync(id=2))
            got: list[bytes] = []
            while len(got) < 4:  # acking frees room: the outbox's retry then fits
                frame = await b.recv()
                if isinstance(frame, Deliver):
                    got += [i.envelope.msg_id for i in frame.items]
                    await b.send(Ack(id=0, seq=frame.items[-1].seq))
        assert got == ids  # once each, in order
        await _wait_outbox(n1, "n2", 0)


async def test_forward_batch_is_answered_per_part(nursery) -> None:
    cluster = Cluster(nursery, make_configs(2))
    n2 = cluster.storages["n2"] = MemoryStorage(capacity_bytes=CAPACITY)
    await cluster.start_all()
    with trio.fail_after(20):
        alice = device_homed_at(cluster.ring, "n1")
        bob = device_homed_at(cluster.ring, "n2")
        await publish(cluster.url("n2"), bob)

        def part(body: bytes, *, user=bob.user_id, device=0, sender=alice.user_id,
                 sender_device=0) -> Forward:
            return Forward(id=0, msg_id=os.urandom(16), sender_user=sender,
                           sender_device=sender_device,
                           ts=1, recipients=[Recipient(user, 1, [Copy(device, body)])])

        items = [part(b"a" * SMALL), part(b"b" * BIG), part(b"c" * BIG),
                 part(b"d", device=5), part(b"e", sender=bob.user_id),
                 part(b"f" * SMALL, sender_device=1), part(b"g" * SMALL)]
        async with peer_session(cluster, "n1", "n2") as p:
            answer = await p.request(ForwardBatch(id=7, items=items))
        assert isinstance(answer, Results) and answer.id == 7
        codes = [a.code if isinstance(a, Error) else a.TYPE for a in answer.items]
        # g would fit, but alice's device 0 had c refused: g may not overtake it
        assert codes == ["ok", "ok", "storage_full", "stale_devices", "bad_request", "ok",
                         "storage_full"]
        assert isinstance(answer.items[0], Ok)
        stored = [msgpack.unpackb(i.envelope)["body"][:1]
                  for i in await n2.read_queue(bob.user_id, 0)]
        assert stored == [b"a", b"b", b"f"]


async def test_kept_entry_is_retried_in_order_not_overtaken_nor_bounced(nursery) -> None:
    """Finding 9 (docs/reliability.md): the destination refuses the second (big) entry
    for room; the third (small) one would fit, but it is the same sending device's
    later message to the same device, so it is refused too and both are kept; once
    the receiver drains, both arrive, in order, and the sender gets no bounce."""
    cluster = Cluster(nursery, make_configs(2))
    n2 = cluster.storages["n2"] = MemoryStorage(capacity_bytes=CAPACITY)
    await cluster.start_all()
    n1 = cluster.storages["n1"]
    with trio.fail_after(30):
        alice = device_homed_at(cluster.ring, "n1")
        bob = device_homed_at(cluster.ring, "n2")
        await publish(cluster.url("n1"), alice)
        await publish(cluster.url("n2"), bob)
        cluster.stop("n2")
        sizes = [BIG, BIG, SMALL]  # the second big one cannot be stored; the small one could
        ids = [os.urandom(16) for _ in sizes]
        async with session(cluster.url("n1"), alice) as a:
            for i, (mid, size) in enumerate(zip(ids, sizes, strict=True)):
                sent = await a.request(Send(id=10 + i, msg_id=mid,
                                            recipients=[bob.recipient(os.urandom(size))]))
                assert sent.status == "queued"
        entries = await _outbox_ids(n1, "n2")
        await cluster.start("n2")
        await _wait_outbox(n1, "n2", 2)
        assert await _outbox_ids(n1, "n2") == entries[1:]  # kept, oldest first
        assert [i.seq for i in await n2.read_queue(bob.user_id, 0)] == [1]
        async with session(cluster.url("n2"), bob) as b:
            await b.send(Sync(id=2))
            got: list[bytes] = []
            while len(got) < 3:  # acking frees room: the retries then fit
                frame = await b.recv()
                if isinstance(frame, Deliver):
                    got += [i.envelope.msg_id for i in frame.items]
                    await b.send(Ack(id=0, seq=frame.items[-1].seq))
        assert got == ids  # once each, in order
        await _wait_outbox(n1, "n2", 0)
        assert await n1.queue_length(alice.user_id, 0) == 0  # no bounce


async def test_forward_batch_items_are_applied_in_item_order(nursery) -> None:
    """A ``bounce`` item before a ``forward`` item for the same device lands first in
    its queue (docs/protocol.md: item order), and a retryable refusal keeps the
    sending device's later items to that device out across the bounce in between."""
    from relay.protocol.frames import BounceBack, Envelope
    from relay.protocol.stored import encode_bounce_body

    cluster = Cluster(nursery, make_configs(2))
    n2 = cluster.storages["n2"] = MemoryStorage(capacity_bytes=CAPACITY)
    await cluster.start_all()
    with trio.fail_after(20):
        alice = device_homed_at(cluster.ring, "n1")
        bob = device_homed_at(cluster.ring, "n2")
        await publish(cluster.url("n2"), bob)

        def part(body: bytes) -> Forward:
            return Forward(id=0, msg_id=os.urandom(16), sender_user=alice.user_id,
                           sender_device=0, ts=1, recipients=[bob.recipient(body)])

        bounce = BounceBack(id=0, envelope=Envelope(
            msg_id=os.urandom(16), sender_user=bob.user_id, sender_device=0, ts=1,
            kind="bounce", body=encode_bounce_body("stale_devices", "", alice.user_id)))
        items = [bounce, part(b"a" * SMALL), part(b"b" * BIG), part(b"c" * BIG), bounce,
                 part(b"d" * SMALL)]
        async with peer_session(cluster, "n1", "n2") as p:
            answer = await p.request(ForwardBatch(id=3, items=items))
        assert isinstance(answer, Results)
        codes = [a.code if isinstance(a, Error) else a.TYPE for a in answer.items]
        assert codes == ["ok", "ok", "ok", "storage_full", "ok", "storage_full"]
        kinds = [msgpack.unpackb(i.envelope)["kind"] for i in await n2.read_queue(bob.user_id, 0)]
        assert kinds == ["bounce", "olm", "olm"]  # the bounce first; the second one deduplicated
