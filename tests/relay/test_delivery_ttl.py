"""Envelopes past the queue TTL are not delivered, even between expiry sweeps."""

from __future__ import annotations

import time

import trio
from relay_harness import Cluster, device_homed_at, make_configs, publish, session

from relay.protocol import read_frame
from relay.protocol.frames import Deliver, Envelope, Frame, Sync, Synced
from relay.services.delivery import DeviceRegistry, Pusher, pack_envelope
from storage.memory import MemoryStorage


def _env(uid: str, body: bytes) -> bytes:
    return pack_envelope(Envelope(b"m" * 16, uid, 0, 0, "olm", body))


async def test_pusher_skips_envelopes_older_than_the_ttl() -> None:
    storage = MemoryStorage()
    registry = DeviceRegistry()
    uid = "u" * 52
    await storage.enqueue([(uid, 0, _env(uid, b"old"))], now=1000.0)
    await storage.enqueue([(uid, 0, _env(uid, b"edge"))], now=1950.0)
    await storage.enqueue([(uid, 0, _env(uid, b"new"))], now=2000.0)
    sent: list[Frame] = []
    done = trio.Event()

    async def send(data: bytes) -> None:
        frame = read_frame(data)
        sent.append(frame)
        if isinstance(frame, Synced):
            done.set()

    pusher = Pusher(storage, registry, uid, 0, send, queue_ttl=100.0, clock=lambda: 2050.0)
    with trio.fail_after(5), registry.register(uid, 0, object()):  # type: ignore[arg-type]
        async with trio.open_nursery() as nursery:
            nursery.start_soon(pusher.run)
            await done.wait()
            nursery.cancel_scope.cancel()
    delivered = [(i.seq, i.envelope.body) for f in sent if isinstance(f, Deliver) for i in f.items]
    assert delivered == [(2, b"edge"), (3, b"new")]
    assert len(sent) == 2  # both in one deliver frame, then synced
    assert isinstance(sent[-1], Synced)
    assert pusher.in_flight == 2


class _CountingExpire(MemoryStorage):
    def __init__(self) -> None:
        super().__init__()
        self.swept = trio.Event()

    async def expire(self, older_than: float) -> int:
        gone = await super().expire(older_than)
        self.swept.set()
        return gone


async def test_node_does_not_deliver_expired_envelopes_before_the_sweep(nursery) -> None:
    cluster = Cluster(nursery, make_configs(1, queue_ttl=100.0))
    st = cluster.storages["n1"] = _CountingExpire()
    bob = device_homed_at(cluster.ring, "n1")
    with trio.fail_after(10):
        await cluster.start("n1")  # its first sweep runs now; the next in 300 s
        await publish(cluster.url("n1"), bob)
        await st.swept.wait()
        await st.enqueue([(bob.user_id, 0, _env(bob.user_id, b"stale"))], now=time.time() - 1000)
        await st.enqueue([(bob.user_id, 0, _env(bob.user_id, b"fresh"))])
        async with session(cluster.url("n1"), bob) as b:
            await b.send(Sync(id=2))
            frames = []
            while not frames or not isinstance(frames[-1], Synced):
                frames.append(await b.recv())
        delivered = [(i.seq, i.envelope.body) for f in frames if isinstance(f, Deliver)
                     for i in f.items]
        assert delivered == [(2, b"fresh")]
        assert await st.queue_length(bob.user_id, 0) == 2  # the sweep deletes the stale one
