"""send / forward / sync / deliver / ack across in-process nodes."""

from __future__ import annotations

import os

import trio
from relay_harness import UserDevice, deliveries, device_homed_at, publish, published, session

from relay.protocol import verify_device_list
from relay.protocol.frames import (
    Ack,
    Copy,
    Error,
    Recipient,
    Send,
    Sent,
    Sync,
    Synced,
)


async def test_send_local_and_remote_then_sync_in_order(cluster3) -> None:
    with trio.fail_after(15):
        alice, bob = await published(cluster3, "n1", "n2")
        carol = device_homed_at(cluster3.ring, "n1")
        await publish(cluster3.url("n1"), carol)
        ids = [os.urandom(16) for _ in range(5)]
        async with session(cluster3.url("n1"), alice) as a:
            for i, mid in enumerate(ids):
                sent = await a.request(Send(id=10 + i, msg_id=mid, recipients=[
                    bob.recipient(f"to bob {i}".encode()), carol.recipient(f"to carol {i}".encode()),
                ]))
                assert sent == Sent(id=10 + i, status="stored")
        for dev, home, text in ((bob, "n2", b"to bob"), (carol, "n1", b"to carol")):
            async with session(cluster3.url(home), dev) as c:
                await c.send(Sync(id=50))
                delivered = await deliveries(c, 5)
                assert isinstance(await c.recv(), Synced)
                assert [d.envelope.msg_id for d in delivered] == ids
                assert [d.envelope.body for d in delivered] == [text + f" {i}".encode() for i in range(5)]
                assert all(d.envelope.sender_user == alice.user_id and d.envelope.kind == "olm"
                           for d in delivered)
                seqs = [d.seq for d in delivered]
                assert seqs == sorted(seqs) and len(set(seqs)) == 5
                await c.send(Ack(id=0, seq=seqs[2]))
            async with session(cluster3.url(home), dev) as c:  # acked ones are gone
                await c.send(Sync(id=51))
                rest = await deliveries(c, 2)
                assert [d.seq for d in rest] == seqs[3:]
                assert isinstance(await c.recv(), Synced)
                await c.send(Ack(id=0, seq=seqs[4]))
            async with session(cluster3.url(home), dev) as c:
                await c.send(Sync(id=52))
                assert isinstance(await c.recv(), Synced)


async def test_live_push_and_duplicate_msg_id(cluster3) -> None:
    with trio.fail_after(15):
        alice, bob = await published(cluster3, "n3", "n1")
        async with session(cluster3.url("n1"), bob) as b, session(cluster3.url("n3"), alice) as a:
            await b.send(Sync(id=2))
            assert isinstance(await b.recv(), Synced)
            mid = os.urandom(16)
            for rid in (3, 4):  # the same msg_id twice: stored once
                assert (await a.request(Send(id=rid, msg_id=mid, recipients=[bob.recipient()]))).status == "stored"
            await a.request(Send(id=5, msg_id=os.urandom(16), recipients=[bob.recipient(b"second")]))
            first, second = await deliveries(b, 2)
            assert first.envelope.msg_id == mid and second.envelope.body == b"second"


async def test_stale_devices_from_remote_and_local_home(cluster3) -> None:
    with trio.fail_after(15):
        alice, bob = await published(cluster3, "n1", "n2")
        await publish(cluster3.url("n2"), UserDevice(account_key=bob.account_key, olm=bob.olm),
                      version=2)  # same device, new version
        bob2_list = bob.device_list(version=3, extra_devices=1)  # bob adds a device
        async with session(cluster3.url("n2"), bob) as b:
            from relay.protocol.frames import PutDevices
            await b.request(PutDevices(id=9, device_list=bob2_list))
        carol = device_homed_at(cluster3.ring, "n1")
        await publish(cluster3.url("n1"), carol, version=1)
        async with session(cluster3.url("n1"), alice) as a:
            mid = os.urandom(16)
            err = await a.request(Send(id=3, msg_id=mid, recipients=[bob.recipient(), carol.recipient()]))
            assert isinstance(err, Error) and err.code == "stale_devices" and err.user_id == bob.user_id
            assert verify_device_list(err.device_list, bob.user_id).device_ids == {0, 100}
            # carol's copy (local home) was stored; bob's home stored nothing
            fixed = Recipient(bob.user_id, 3, [Copy(0, b"c0"), Copy(100, b"c100")])
            ok = await a.request(Send(id=4, msg_id=mid, recipients=[fixed, carol.recipient()]))
            assert ok == Sent(id=4, status="stored")
            wrong = Recipient(carol.user_id, 1, [Copy(0, b"x"), Copy(0, b"y")])
            err = await a.request(Send(id=5, msg_id=os.urandom(16), recipients=[wrong]))
            assert isinstance(err, Error) and err.code == "stale_devices"
            err = await a.request(Send(id=6, msg_id=os.urandom(16),
                                       recipients=[UserDevice().recipient()]))
            assert isinstance(err, Error) and err.code == "unknown_user"
        async with session(cluster3.url("n1"), carol) as c:
            await c.send(Sync(id=2))
            (only,) = await deliveries(c, 1)
            assert only.envelope.msg_id == mid
            assert isinstance(await c.recv(), Synced)
        async with session(cluster3.url("n2"), bob) as b:
            await b.send(Sync(id=2))
            got = await deliveries(b, 3)  # the notices of bob's own lists v2 and v3, then the copy
            assert [d.envelope.kind for d in got] == ["device_list", "device_list", "olm"]
            assert got[2].envelope.body == b"c0"


async def test_queue_full(nursery) -> None:
    from relay_harness import Cluster, make_configs

    cluster = Cluster(nursery, make_configs(1, max_queue=3))
    await cluster.start("n1")
    with trio.fail_after(10):
        url = cluster.url("n1")
        alice, bob = UserDevice(), UserDevice()
        await publish(url, alice)
        await publish(url, bob)
        async with session(url, alice) as a:
            for i in range(3):
                assert isinstance(await a.request(Send(id=i + 2, msg_id=os.urandom(16),
                                                       recipients=[bob.recipient()])), Sent)
            err = await a.request(Send(id=9, msg_id=os.urandom(16), recipients=[bob.recipient()]))
            assert isinstance(err, Error) and err.code == "queue_full"


async def test_window_of_unacked_deliveries(node1) -> None:
    with trio.fail_after(20):
        url = node1.url("n1")
        alice, bob = UserDevice(), UserDevice()
        await publish(url, alice)
        await publish(url, bob)
        async with session(url, alice) as a:
            for i in range(300):
                await a.send(Send(id=i + 2, msg_id=os.urandom(16), recipients=[bob.recipient()]))
            for _ in range(300):
                assert isinstance(await a.recv(), Sent)
        async with session(url, bob) as b:
            await b.send(Sync(id=2))
            first = await deliveries(b, 256)
            # no more than 256 in flight: nothing else arrives until an ack
            with trio.move_on_after(0.3) as idle:
                await b.recv()
            assert idle.cancelled_caught
            await b.send(Ack(id=0, seq=first[-1].seq))
            rest = await deliveries(b, 44)
            assert isinstance(await b.recv(), Synced)
            assert [d.seq for d in first + rest] == list(range(1, 301))


async def test_copies_for_the_senders_other_devices(node1) -> None:
    with trio.fail_after(10):
        url = node1.url("n1")
        alice, bob = UserDevice(), UserDevice()
        await publish(url, bob)
        signed = alice.device_list(extra_devices=1)  # devices 0 (this one) and 100
        async with session_after_put(url, alice, signed) as a:
            mine = Recipient(alice.user_id, 1, [Copy(100, b"for my laptop")])
            sent = await a.request(Send(id=3, msg_id=os.urandom(16), recipients=[bob.recipient(), mine]))
            assert sent == Sent(id=3, status="stored")
            both = Recipient(alice.user_id, 1, [Copy(0, b"me"), Copy(100, b"laptop")])
            err = await a.request(Send(id=4, msg_id=os.urandom(16), recipients=[both]))
            assert isinstance(err, Error) and err.code == "stale_devices"
        assert await node1.storages["n1"].queue_length(alice.user_id, 100) == 1
        assert await node1.storages["n1"].queue_length(alice.user_id, 0) == 0


def session_after_put(url, device, signed):
    from contextlib import asynccontextmanager

    from relay_harness import connect

    from relay.protocol.frames import AuthOk, Ok, PutDevices

    @asynccontextmanager
    async def cm():
        async with connect(url) as c:
            await c.hello()
            assert isinstance(await c.request(PutDevices(id=2, device_list=signed)), Ok)
            assert isinstance(await c.auth(device), AuthOk)
            yield c

    return cm()


async def test_unreachable_home_for_reads(nursery) -> None:
    from relay_harness import Cluster, make_configs

    from relay.protocol.frames import ClaimKeys, GetDevices

    cluster = Cluster(nursery, make_configs(2))
    await cluster.start("n1")
    with trio.fail_after(10):
        alice = device_homed_at(cluster.ring, "n1")
        bob = device_homed_at(cluster.ring, "n2")
        await publish(cluster.url("n1"), alice)
        async with session(cluster.url("n1"), alice) as a:
            err = await a.request(GetDevices(id=3, user_id=bob.user_id))
            assert isinstance(err, Error) and err.code == "unavailable"
            err = await a.request(ClaimKeys(id=4, user_id=bob.user_id, device_ids=[0]))
            assert isinstance(err, Error) and err.code == "unavailable"
