"""A hostile peer node (valid node key) forwards from a crowd of made-up senders into
one victim's queue, on real nodes on 127.0.0.1: the peer as a whole holds at most its
share of the queue (``queue_peer_share``), is refused ``quota_exceeded`` naming that
share with a retry-after, and a local contact's message still gets through; the
victim gets every message that was accepted (issue 11)."""

from __future__ import annotations

import os

import trio
from relay_harness import (
    Cluster,
    deliveries,
    device_homed_at,
    make_configs,
    peer_session,
    publish,
    session,
)

from relay.config.abuse import AbuseLimits
from relay.protocol.frames import Ack, Error, Forward, ForwardBatch, Send, Sent, Sync

KiB = 1024
QUEUE = 256 * KiB


async def test_a_peer_holds_at_most_its_share_of_a_victims_queue(nursery) -> None:
    abuse = AbuseLimits(queue_device_bytes=QUEUE, queue_peer_share=0.25,
                        queue_sender_share=1.0, queue_strangers_share=1.0)
    cluster = Cluster(nursery, make_configs(2, abuse=abuse))
    await cluster.start_all()
    store = cluster.storages["n1"]
    with trio.fail_after(30):
        victim = device_homed_at(cluster.ring, "n1")
        contact = device_homed_at(cluster.ring, "n1")
        for d in (victim, contact):
            await publish(cluster.url("n1"), d)
        accepted: list[bytes] = []
        refused: list[Error] = []
        async with peer_session(cluster, "n2", "n1") as p:
            for i in range(24):  # 24 made-up senders x 8 KiB = 192 KiB; the share is 64
                sender = device_homed_at(cluster.ring, "n2")
                mid = os.urandom(16)
                answer = await p.request(ForwardBatch(id=0, items=[Forward(
                    id=0, msg_id=mid, sender_user=sender.user_id, sender_device=0, ts=1,
                    recipients=[victim.recipient(b"%d" % i + b"p" * 8 * KiB)])]))
                (item,) = answer.items
                if isinstance(item, Error):
                    refused.append(item)
                else:
                    accepted.append(mid)
        assert refused and accepted
        for item in refused:
            assert (item.code, item.quota) == ("quota_exceeded", "peer_share"), item
            assert item.retry_after_ms is not None and item.retry_after_ms > 0
        assert await store.charged_bytes("n:n2", victim.user_id, 0) <= QUEUE // 4
        async with session(cluster.url("n1"), contact) as c:  # the rest is for others
            for _ in range(8):
                mid = os.urandom(16)
                sent = await c.request(Send(id=0, msg_id=mid, recipients=[
                    victim.recipient(b"c" * 8 * KiB)]))
                assert isinstance(sent, Sent) and sent.status == "stored", sent
                accepted.append(mid)
        async with session(cluster.url("n1"), victim) as v:  # nothing accepted is lost
            await v.send(Sync(id=0))
            got = await deliveries(v, len(accepted))
            assert sorted(d.envelope.msg_id for d in got) == sorted(accepted)
            await v.send(Ack(id=0, seq=got[-1].seq))
