"""The size budget through a reshape handoff (docs/protocol.md, "Size budget" and
"Handoff"): a moving user whose queue fills a ``handoff_put`` batch and who also has
an entry in the outbox must still be handed over. Real nodes on 127.0.0.1."""

from __future__ import annotations

import os
import time

import trio
from relay_harness import UserDevice, deliveries, publish, session

from relay.config.ring import Ring
from relay.protocol import DEFAULT_LIMITS, write_frame
from relay.protocol.frames import Forward, Send, Sent, Sync
from relay.testing import LocalCluster, node_configs, reshape_configs

MAX_ENV = DEFAULT_LIMITS.max_envelope
DEADLINE = 30


def _homed(old: Ring, new: Ring, old_home: str, new_home: str) -> UserDevice:
    while True:
        d = UserDevice()
        if old.home(d.user_id).id == old_home and new.home(d.user_id).id == new_home:
            return d


async def test_a_full_batch_and_an_outbox_entry_of_a_moving_user_are_handed_over() -> None:
    """Before the fix: the first outbox entry was added to a ``handoff_put`` whose
    records already filled the peer frame budget; the put exceeded ``max_peer_frame``,
    was refused ``too_large`` before it left, and the handoff retried it forever (the
    user was never handed over, the reshape never finished)."""
    old = node_configs(2)
    new = reshape_configs(old, 3)
    old_ring, new_ring = Ring(old[0].cluster), Ring(new[0].cluster)
    mover = _homed(old_ring, new_ring, "n1", "n3")
    friend = _homed(old_ring, new_ring, "n1", "n1")
    away = _homed(old_ring, new_ring, "n2", "n2")
    with trio.fail_after(DEADLINE):
        async with trio.open_nursery() as nursery:
            cluster = LocalCluster(nursery, old)
            await cluster.start("n1")
            await cluster.start("n2")
            for device, home in ((mover, "n1"), (friend, "n1"), (away, "n2")):
                await publish(cluster.url(home), device)
            cluster.stop("n2")  # the mover's send to `away` waits in n1's outbox
            bodies = [os.urandom(MAX_ENV) for _ in range(4)]  # one put's worth of records
            async with session(cluster.url("n1"), friend) as f:
                for i, body in enumerate(bodies):
                    answer = await f.request(Send(id=3 + i, msg_id=os.urandom(16),
                                                  recipients=[mover.recipient(body)]))
                    assert answer == Sent(id=3 + i, status="stored")
            async with session(cluster.url("n1"), mover) as m:
                answer = await m.request(Send(id=3, msg_id=os.urandom(16),
                                              recipients=[away.recipient(os.urandom(MAX_ENV))]))
                assert answer == Sent(id=3, status="queued")
            cluster.stop("n1")
            cluster.configs = new  # the reshape: n1 hands the mover over to n3 (n2 is down)
            cluster.urls.update({c.id: c.node.url for c in new})
            await cluster.start("n3")
            await cluster.start("n1")
            storage = cluster.storages["n3"]
            while await storage.queue_length(mover.user_id, 0) < len(bodies):  # noqa: ASYNC110 - poll, deadline above
                await trio.sleep(0.05)
            async with session(cluster.url("n3"), mover) as m:
                await m.send(Sync(id=2))
                got = await deliveries(m, len(bodies))
            assert [d.envelope.body for d in got] == bodies
            nursery.cancel_scope.cancel()


async def test_thousands_of_small_outbox_entries_of_a_moving_user_are_handed_over() -> None:
    """Before the fix: every outbox entry of the user went into one ``handoff_put``
    while its bytes fit, so 5000 small forwards made an array above the peer decoder's
    4096 items (``bad_frame``), refused at every retry."""
    old = node_configs(2)
    new = reshape_configs(old, 3)
    old_ring, new_ring = Ring(old[0].cluster), Ring(new[0].cluster)
    mover = _homed(old_ring, new_ring, "n1", "n3")
    away = _homed(old_ring, new_ring, "n2", "n2")
    with trio.fail_after(DEADLINE):
        async with trio.open_nursery() as nursery:
            cluster = LocalCluster(nursery, old)
            await cluster.start("n1")
            await publish(cluster.url("n1"), mover)
            cluster.stop("n1")
            storage = cluster.storages["n1"]
            for _ in range(5000):  # what n1's outbox holds for n2 (down) from the mover
                await storage.outbox_put("n2", write_frame(Forward(
                    id=0, msg_id=os.urandom(16), sender_user=mover.user_id, sender_device=0,
                    ts=int(time.time() * 1000), recipients=[away.recipient(b"x")])))
            cluster.configs = new
            cluster.urls.update({c.id: c.node.url for c in new})
            await cluster.start("n3")
            await cluster.start("n1")
            while len(await cluster.storages["n3"].outbox_list("n2", limit=10_000)) < 5000:  # noqa: ASYNC110
                await trio.sleep(0.05)
            nursery.cancel_scope.cancel()
