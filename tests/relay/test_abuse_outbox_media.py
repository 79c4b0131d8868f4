"""Abuse limits of the outbox toward an unreachable peer and of media (issue 11):
over a cap the sender gets ``quota_exceeded`` with its limit and a retry-after,
never a silent drop; what was accepted is delivered."""

from __future__ import annotations

import dataclasses
import hashlib
import os

import trio
from relay_harness import (
    Cluster,
    UserDevice,
    deliveries,
    device_homed_at,
    make_configs,
    peer_session,
    publish,
    published,
    session,
)

from relay.config.abuse import AbuseLimits
from relay.protocol.frames import (
    Error,
    Forward,
    ForwardBatch,
    MediaProgress,
    MediaUpload,
    Ok,
    Results,
    Send,
    Sent,
    Sync,
)
from relay.services.outbox import RETRYABLE


async def test_outbox_caps_refuse_the_sender_and_deliver_what_was_queued(nursery) -> None:
    abuse = dataclasses.replace(AbuseLimits(), outbox_sender_bytes=4096, outbox_total_bytes=6144)
    cluster = Cluster(nursery, make_configs(2, abuse=abuse))
    await cluster.start_all()
    with trio.fail_after(30):
        alice, carol, bob = await published(cluster, "n1", "n1", "n2")
        cluster.stop("n2")
        queued: list[bytes] = []
        refused: list[Error] = []

        async def send(sender: UserDevice, n: int) -> None:
            async with session(cluster.url("n1"), sender) as s:
                for i in range(n):
                    mid = os.urandom(16)
                    answer = await s.request(Send(id=2 + i, msg_id=mid, recipients=[
                        bob.recipient(b"x" * 900)]))
                    if isinstance(answer, Sent):
                        assert answer.status == "queued"
                        queued.append(mid)
                    else:
                        refused.append(answer)

        await send(alice, 8)  # ~1.1 KiB per entry: 3 fit alice's 4 KiB
        assert len(queued) == 3 and len(refused) == 5
        await send(carol, 8)  # the total (6 KiB) leaves carol 2
        assert len(queued) == 5 and len(refused) == 11
        assert {r.code for r in refused} == {"quota_exceeded"}
        assert [r.quota for r in refused] == ["outbox_sender"] * 5 + ["outbox_total"] * 6
        assert all(r.retry_after_ms == 60_000 for r in refused)
        assert len(await cluster.storages["n1"].outbox_list("n2")) == 5
        await cluster.start("n2")
        async with session(cluster.url("n2"), bob) as b:
            await b.send(Sync(id=2))
            got = await deliveries(b, 5)
            assert sorted(d.envelope.msg_id for d in got) == sorted(queued)
        # once delivered, the outbox has room again
        while await cluster.storages["n1"].outbox_list("n2"):  # noqa: ASYNC110 - poll, deadline above
            await trio.sleep(0.01)


async def test_media_account_quota(nursery) -> None:
    abuse = dataclasses.replace(AbuseLimits(), media_account_quota=300_000)
    cluster = Cluster(nursery, make_configs(1, abuse=abuse))
    await cluster.start("n1")
    with trio.fail_after(20):
        alice, bob = UserDevice(), UserDevice()
        for d in (alice, bob):
            assert await publish(cluster.url("n1"), d) == Ok(id=2)
        first, second = os.urandom(200_000), os.urandom(200_000)
        async with session(cluster.url("n1"), alice) as a:
            done = await a.request(MediaUpload(id=3, media_id=hashlib.sha256(first).digest(),
                                               size=len(first), offset=0, chunk=first))
            assert isinstance(done, MediaProgress) and done.complete
            over = await a.request(MediaUpload(id=4, media_id=hashlib.sha256(second).digest(),
                                               size=len(second), offset=0, chunk=second))
            assert isinstance(over, Error)
            assert (over.code, over.quota) == ("quota_exceeded", "media_account")
            assert over.retry_after_ms and over.retry_after_ms > 0
        async with session(cluster.url("n1"), bob) as b:  # another account has its own quota
            ok = await b.request(MediaUpload(id=3, media_id=hashlib.sha256(second).digest(),
                                             size=len(second), offset=0, chunk=second))
            assert isinstance(ok, MediaProgress) and ok.complete


async def test_a_peer_nodes_forwards_are_rate_limited_and_retryable(nursery) -> None:
    abuse = dataclasses.replace(AbuseLimits(), peer_forward_rate=1.0, peer_forward_burst=5.0)
    cluster = Cluster(nursery, make_configs(2, abuse=abuse))
    await cluster.start_all()
    with trio.fail_after(20):
        alice = device_homed_at(cluster.ring, "n1")
        bob = device_homed_at(cluster.ring, "n2")
        assert await publish(cluster.url("n2"), bob) == Ok(id=2)

        def part() -> Forward:
            return Forward(id=0, msg_id=os.urandom(16), sender_user=alice.user_id,
                           sender_device=0, ts=1, recipients=[bob.recipient()])

        async with peer_session(cluster, "n1", "n2") as p:
            first = await p.request(ForwardBatch(id=7, items=[part() for _ in range(5)]))
            assert [a.TYPE for a in first.items] == ["ok"] * 5
            second = await p.request(ForwardBatch(id=8, items=[part() for _ in range(3)]))
        assert isinstance(second, Results)
        for item in second.items:  # the whole batch waits; the peer's outbox retries it
            assert isinstance(item, Error) and (item.code, item.quota) == (
                "rate_limited", "peer_forward")
            assert 1000 < item.retry_after_ms <= 3001
        assert "rate_limited" in RETRYABLE
        assert await cluster.storages["n2"].queue_length(bob.user_id, 0) == 5
