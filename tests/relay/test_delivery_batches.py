"""The pusher: deliver frames of many envelopes within max_frame, built from the stored
bytes; a queue head no frame can carry is bounced and removed, not left blocking."""

from __future__ import annotations

import msgpack
import trio
import trio.testing
from relay_harness import Cluster, deliveries, device_homed_at, make_configs, publish, session

from relay.protocol import read_frame
from relay.protocol.frames import Deliver, Envelope, Sync, Synced
from relay.protocol.stored import encode_envelope
from relay.services.delivery import DeviceRegistry, Pusher
from storage.memory import MemoryStorage

BOB, ALICE = "b" * 52, "a" * 52


def _env(i: int, body: bytes) -> bytes:
    return encode_envelope(Envelope(bytes([i]) * 16, ALICE, 3, 1, "olm", body))


async def _push(storage, *, max_frame: int, acks: bool) -> tuple[list[bytes], Pusher]:
    """Run a pusher for bob until ``synced``; ack each deliver frame if ``acks``."""
    registry = DeviceRegistry()
    frames: list[bytes] = []
    done = trio.Event()
    pusher: Pusher

    async def send(data: bytes) -> None:
        frames.append(data)
        frame = read_frame(data)
        if isinstance(frame, Synced):
            done.set()
        elif acks:
            pusher.on_ack(frame.items[-1].seq)

    pusher = Pusher(storage, registry, BOB, 0, send, max_frame=max_frame)
    with trio.fail_after(5), registry.register(BOB, 0, object()):  # type: ignore[arg-type]
        async with trio.open_nursery() as nursery:
            nursery.start_soon(pusher.run)
            await done.wait()
            nursery.cancel_scope.cancel()
    return frames, pusher


async def test_ready_envelopes_go_out_together_within_max_frame() -> None:
    storage = MemoryStorage()
    stored = [_env(i, bytes([i]) * 100) for i in range(100)]
    await storage.enqueue([(BOB, 0, e) for e in stored])
    frames, pusher = await _push(storage, max_frame=2048, acks=True)
    delivers = [read_frame(f) for f in frames[:-1]]
    assert all(isinstance(d, Deliver) for d in delivers)
    assert max(len(f) for f in frames) <= 2048
    assert 1 < len(delivers) < 100  # several envelopes per frame, several frames
    items = [i for d in delivers for i in d.items]
    assert [i.seq for i in items] == list(range(1, 101))
    assert [encode_envelope(i.envelope) for i in items] == stored  # the stored bytes, as they are
    assert pusher.delivered == 100


async def test_an_undeliverable_head_is_bounced_and_removed() -> None:
    storage = MemoryStorage()
    await storage.enqueue([(BOB, 0, _env(1, b"small")), (BOB, 0, _env(2, b"x" * 5000)),
                           (BOB, 0, _env(3, b"after"))])
    frames, _ = await _push(storage, max_frame=2048, acks=True)
    got = [read_frame(f) for f in frames]
    assert [[i.envelope.body for i in f.items] for f in got[:-1]] == [[b"small"], [b"after"]]
    assert isinstance(got[-1], Synced)
    assert [i.seq for i in await storage.read_queue(BOB, 0)] == [3]  # 1 acked, 2 removed
    (bounce,) = await storage.read_queue(ALICE, 3)
    env = msgpack.unpackb(bounce.envelope)
    assert env["kind"] == "bounce" and env["msg_id"] == bytes([2]) * 16
    assert msgpack.unpackb(env["body"])["code"] == "too_large"


async def test_an_undeliverable_head_waits_for_the_acks_before_it() -> None:
    storage = MemoryStorage()
    await storage.enqueue([(BOB, 0, _env(1, b"small")), (BOB, 0, _env(2, b"x" * 5000))])
    registry = DeviceRegistry()
    sent: list[bytes] = []
    first = trio.Event()

    async def send(data: bytes) -> None:
        sent.append(data)
        first.set()

    pusher = Pusher(storage, registry, BOB, 0, send, max_frame=2048)
    with trio.fail_after(5), registry.register(BOB, 0, object()):  # type: ignore[arg-type]
        async with trio.open_nursery() as nursery:
            nursery.start_soon(pusher.run)
            await first.wait()
            await trio.testing.wait_all_tasks_blocked()
            # seq 1 is delivered but not acknowledged: nothing may be deleted yet
            assert [i.seq for i in await storage.read_queue(BOB, 0)] == [1, 2]
            pusher.on_ack(1)
            while await storage.queue_length(BOB, 0):  # noqa: ASYNC110 - poll, deadline above
                await trio.sleep(0.01)
            nursery.cancel_scope.cancel()


async def test_an_undeliverable_head_is_bounced_to_a_sender_on_another_node(nursery) -> None:
    cluster = Cluster(nursery, make_configs(2, max_frame=64 * 1024))
    await cluster.start_all()
    with trio.fail_after(20):
        alice = device_homed_at(cluster.ring, "n1")
        bob = device_homed_at(cluster.ring, "n2")
        await publish(cluster.url("n1"), alice)
        await publish(cluster.url("n2"), bob)
        big = encode_envelope(Envelope(b"B" * 16, alice.user_id, 0, 1, "olm", b"x" * 100_000))
        after = encode_envelope(Envelope(b"A" * 16, alice.user_id, 0, 2, "olm", b"after"))
        # stored under an older, larger max_frame: no deliver frame can carry it now
        await cluster.storages["n2"].enqueue([(bob.user_id, 0, big), (bob.user_id, 0, after)])
        async with session(cluster.url("n2"), bob) as b:
            await b.send(Sync(id=2))
            (item,) = await deliveries(b, 1)
            assert item.envelope.msg_id == b"A" * 16  # the head no longer blocks the queue
        async with session(cluster.url("n1"), alice) as a:
            await a.send(Sync(id=2))
            (bounce,) = await deliveries(a, 1)
        assert bounce.envelope.kind == "bounce" and bounce.envelope.msg_id == b"B" * 16
        assert msgpack.unpackb(bounce.envelope.body)["code"] == "too_large"
        assert msgpack.unpackb(bounce.envelope.body)["user_id"] == bob.user_id
