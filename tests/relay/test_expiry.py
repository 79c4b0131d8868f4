"""Queued envelopes expire after the TTL; old outbox entries bounce."""

from __future__ import annotations

import time

import trio
from relay_harness import Cluster, UserDevice, device_homed_at, make_configs, publish, session

from relay.protocol import write_frame
from relay.protocol.frames import Deliver, Envelope, Forward, Sync
from relay.services.delivery import pack_envelope
from storage.memory import MemoryStorage


async def test_expiry_task_deletes_old_envelopes(nursery) -> None:
    cluster = Cluster(nursery, make_configs(1, queue_ttl=100.0))
    st = cluster.storages["n1"] = MemoryStorage()
    uid = UserDevice().user_id
    env = pack_envelope(Envelope(b"m" * 16, uid, 0, 0, "olm", b"x"))
    await st.enqueue([(uid, 0, env)], now=time.time() - 1000)  # expired
    await st.enqueue([(uid, 0, env)])  # fresh
    with trio.fail_after(10):
        await cluster.start("n1")
        while await st.queue_length(uid, 0) != 1:  # noqa: ASYNC110 - poll, deadline above
            await trio.sleep(0.01)
        (left,) = await st.read_queue(uid, 0)
        assert left.seq == 2


async def test_outbox_entry_older_than_ttl_bounces(nursery) -> None:
    cluster = Cluster(nursery, make_configs(2, queue_ttl=100.0))
    st = cluster.storages["n1"] = MemoryStorage()
    alice = device_homed_at(cluster.ring, "n1")
    bob = device_homed_at(cluster.ring, "n2")  # n2 never starts
    old = Forward(id=0, msg_id=b"o" * 16, sender_user=alice.user_id, sender_device=0,
                  ts=int((time.time() - 1000) * 1000), recipients=[bob.recipient()])
    await st.outbox_put("n2", write_frame(old))
    with trio.fail_after(10):
        await cluster.start("n1")
        await publish(cluster.url("n1"), alice)
        async with session(cluster.url("n1"), alice) as a:
            await a.send(Sync(id=2))
            frame = await a.recv()
            assert isinstance(frame, Deliver) and frame.items[0].envelope.kind == "bounce"
            assert frame.items[0].envelope.msg_id == b"o" * 16
        assert await st.outbox_list("n2") == []
