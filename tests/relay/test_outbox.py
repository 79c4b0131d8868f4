"""The durable outbox: a recipient home that is down, comes back, or finally refuses."""

from __future__ import annotations

import os

import msgpack
import trio
from relay_harness import (
    UserDevice,
    deliveries,
    device_homed_at,
    list_of,
    publish_list,
    published,
    session,
)

from relay.protocol.frames import Copy, Ok, Recipient, Send, Sent, Sync, Synced


async def test_home_down_then_back(cluster2) -> None:
    cluster = cluster2
    with trio.fail_after(20):
        alice, bob = await published(cluster, "n1", "n2")
        cluster.stop("n2")
        ids = [os.urandom(16) for _ in range(3)]
        async with session(cluster.url("n1"), alice) as a:
            for i, mid in enumerate(ids):
                sent = await a.request(Send(id=i + 2, msg_id=mid, recipients=[bob.recipient(bytes([i]))]))
                assert sent == Sent(id=i + 2, status="queued")
            assert len(await cluster.storages["n1"].outbox_list("n2")) == 3
            await cluster.start("n2")
            async with session(cluster.url("n2"), bob) as b:
                await b.send(Sync(id=2))
                got = await deliveries(b, 3)
                assert [d.envelope.msg_id for d in got] == ids
                assert [d.envelope.body for d in got] == [b"\x00", b"\x01", b"\x02"]
                # the outbox is empty again; new sends go straight through
                while await cluster.storages["n1"].outbox_list("n2"):  # noqa: ASYNC110 - poll, deadline above
                    await trio.sleep(0.01)
                sent = await a.request(Send(id=9, msg_id=os.urandom(16), recipients=[bob.recipient(b"live")]))
                assert sent.status == "stored"
                (live,) = await deliveries(b, 1)
                assert live.envelope.body == b"live"


async def test_final_rejection_bounces_once(cluster2_n1_only) -> None:
    cluster = cluster2_n1_only
    with trio.fail_after(20):
        (alice,) = await published(cluster, "n1")
        bob = device_homed_at(cluster.ring, "n2")  # never publishes a device list
        mid = os.urandom(16)
        async with session(cluster.url("n1"), alice) as a:
            await a.send(Sync(id=2))
            assert isinstance(await a.recv(), Synced)
            sent = await a.request(Send(id=3, msg_id=mid, recipients=[bob.recipient()]))
            assert sent.status == "queued"
            await cluster.start("n2")
            (bounce,) = await deliveries(a, 1)
            assert bounce.envelope.kind == "bounce" and bounce.envelope.msg_id == mid
            assert bounce.envelope.sender_user == alice.user_id
            body = msgpack.unpackb(bounce.envelope.body)
            assert body["code"] == "unknown_user" and body["user_id"] == bob.user_id
            assert await cluster.storages["n1"].outbox_list("n2") == []
            assert await cluster.storages["n1"].queue_length(alice.user_id, 0) == 1


async def _alice_and_bob_with_laptop(cluster) -> tuple[UserDevice, UserDevice]:
    """alice at n1; bob at n2 with a phone (0) and a laptop (1) in list v1."""
    (alice,) = await published(cluster, "n1")
    bob = device_homed_at(cluster.ring, "n2")
    assert await publish_list(cluster.url("n2"), list_of([bob, bob.companion(1)], 1)) == Ok(id=2)
    return alice, bob


async def test_queued_copy_for_a_removed_device_keeps_order(cluster2) -> None:
    """docs/protocol.md "Order", rule 6 (docs/reliability.md finding 15): a part
    answered ``queued`` whose recipient lost a device meanwhile is stored for the
    devices left, in order, instead of being bounced and resent behind later ones."""
    cluster = cluster2
    with trio.fail_after(20):
        alice, bob = await _alice_and_bob_with_laptop(cluster)
        assert await publish_list(cluster.url("n2"), list_of([bob], 2)) == Ok(id=2)
        cluster.stop("n2")
        stale = Recipient(bob.user_id, 1, [Copy(0, b"first"), Copy(1, b"for the laptop")])
        fresh = Recipient(bob.user_id, 2, [Copy(0, b"second")])
        ids = [os.urandom(16), os.urandom(16)]
        async with session(cluster.url("n1"), alice) as a:
            await a.send(Sync(id=2))
            assert isinstance(await a.recv(), Synced)
            for i, (mid, r) in enumerate(zip(ids, (stale, fresh), strict=True)):
                sent = await a.request(Send(id=i + 3, msg_id=mid, recipients=[r]))
                assert sent == Sent(id=i + 3, status="queued")
            await cluster.start("n2")
            async with session(cluster.url("n2"), bob) as b:
                await b.send(Sync(id=2))
                got = [d for d in await deliveries(b, 3) if d.envelope.kind == "olm"]
            assert [d.envelope.msg_id for d in got] == ids
            assert [d.envelope.body for d in got] == [b"first", b"second"]
            while await cluster.storages["n1"].outbox_list("n2"):  # noqa: ASYNC110 - poll, deadline above
                await trio.sleep(0.01)
            # nothing bounced back to alice, nothing kept for the removed laptop
            assert await cluster.storages["n1"].queue_length(alice.user_id, 0) == 0
            assert await cluster.storages["n2"].queue_length(bob.user_id, 1) == 0


async def test_queued_part_missing_a_new_device_still_bounces(cluster2) -> None:
    """Only removals are absorbed: a queued part without a copy for a device added
    since is bounced (``stale_devices``) so the sender re-encrypts for it."""
    cluster = cluster2
    with trio.fail_after(20):
        alice, bob = await _alice_and_bob_with_laptop(cluster)
        cluster.stop("n2")
        mid = os.urandom(16)
        async with session(cluster.url("n1"), alice) as a:
            await a.send(Sync(id=2))
            assert isinstance(await a.recv(), Synced)
            only_phone = Recipient(bob.user_id, 0, [Copy(0, b"x")])
            sent = await a.request(Send(id=3, msg_id=mid, recipients=[only_phone]))
            assert sent == Sent(id=3, status="queued")
            await cluster.start("n2")
            (bounce,) = await deliveries(a, 1)
            assert bounce.envelope.kind == "bounce" and bounce.envelope.msg_id == mid
            assert msgpack.unpackb(bounce.envelope.body)["code"] == "stale_devices"
