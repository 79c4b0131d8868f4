"""Device-list changes: watchers, device_list notices (also via the outbox), device removal."""

from __future__ import annotations

import os

import msgpack
import trio
from relay_harness import (
    UserDevice,
    connect,
    deliveries,
    device_homed_at,
    list_of,
    make_configs,
    peer_session,
    publish,
    publish_list,
    published,
    session,
)

from relay.protocol import verify_device_list
from relay.protocol.frames import (
    Copy,
    Devices,
    Envelope,
    Error,
    GetDevices,
    Notify,
    Ok,
    PutDevices,
    Recipient,
    Send,
    Sent,
    SignedDeviceList,
    Sync,
    Synced,
    UploadKeys,
)
from relay.services.notices import notice_msg_id


def _notice_list(env: Envelope) -> SignedDeviceList:
    m = msgpack.unpackb(env.body)
    return SignedDeviceList(body=m["body"], signature=m["signature"])


async def test_watcher_on_another_node_gets_the_notice(cluster3) -> None:
    with trio.fail_after(15):
        bob = device_homed_at(cluster3.ring, "n2")
        alice = device_homed_at(cluster3.ring, "n1")
        carol = device_homed_at(cluster3.ring, "n2")  # a watcher at bob's own home
        dave = device_homed_at(cluster3.ring, "n3")
        for d, home in ((bob, "n2"), (alice, "n1"), (carol, "n2"), (dave, "n3")):
            await publish(cluster3.url(home), d)
        async with session(cluster3.url("n1"), alice) as a:
            got = await a.request(GetDevices(id=3, user_id=bob.user_id, watcher=dave.user_id))
            assert isinstance(got, Devices)
        async with session(cluster3.url("n2"), carol) as c:
            assert isinstance(await c.request(GetDevices(id=3, user_id=bob.user_id)), Devices)
        # alice's node names alice (a client's watcher field is ignored): dave is no watcher
        assert await cluster3.storages["n2"].watchers(bob.user_id) == sorted(
            [alice.user_id, carol.user_id])
        laptop = bob.companion(1)
        new_list = list_of([bob, laptop], 2)
        async with session(cluster3.url("n1"), alice) as a:
            await a.send(Sync(id=2))
            assert isinstance(await a.recv(), Synced)
            assert await publish_list(cluster3.url("n2"), new_list) == Ok(id=2)
            (notice,) = await deliveries(a, 1)
        env = notice.envelope
        assert (env.kind, env.sender_user, env.sender_device) == ("device_list", bob.user_id, 0)
        assert env.msg_id == notice_msg_id(bob.user_id, 2)
        assert _notice_list(env) == new_list
        assert verify_device_list(_notice_list(env), bob.user_id).device_ids == {0, 1}
        n2 = cluster3.storages["n2"]
        # bob's devices (the new one too) and carol got it once; nothing for alice at n2
        for user, device in ((bob.user_id, 0), (bob.user_id, 1), (carol.user_id, 0)):
            (item,) = await n2.read_queue(user, device)
            assert msgpack.unpackb(item.envelope)["msg_id"] == env.msg_id
        assert await n2.queue_length(alice.user_id, 0) == 0
        assert await cluster3.storages["n3"].queue_length(dave.user_id, 0) == 0


async def test_notice_reaches_a_watcher_whose_home_was_down(cluster2) -> None:
    cluster = cluster2
    with trio.fail_after(20):
        bob, alice = await published(cluster, "n2", "n1")
        async with session(cluster.url("n1"), alice) as a:
            assert isinstance(await a.request(GetDevices(id=3, user_id=bob.user_id)), Devices)
        cluster.stop("n1")
        new_list = list_of([bob, bob.companion(1)], 2)
        assert await publish_list(cluster.url("n2"), new_list) == Ok(id=2)
        (entry,) = await cluster.storages["n2"].outbox_list("n1")
        assert entry.payload.find(b"notify") >= 0
        await cluster.start("n1")
        async with session(cluster.url("n1"), alice) as a:
            await a.send(Sync(id=2))
            (notice,) = await deliveries(a, 1)
            assert notice.envelope.kind == "device_list"
            assert _notice_list(notice.envelope) == new_list
        while await cluster.storages["n2"].outbox_list("n1"):  # noqa: ASYNC110 - poll, deadline above
            await trio.sleep(0.01)


async def test_stale_devices_makes_the_sender_a_watcher(cluster3) -> None:
    with trio.fail_after(10):
        bob = device_homed_at(cluster3.ring, "n2")
        dave = device_homed_at(cluster3.ring, "n3")
        await publish(cluster3.url("n2"), bob)
        await publish(cluster3.url("n3"), dave)
        async with session(cluster3.url("n3"), dave) as d:
            wrong = Recipient(bob.user_id, 1, [Copy(7, b"x")])
            err = await d.request(Send(id=2, msg_id=os.urandom(16), recipients=[wrong]))
            assert isinstance(err, Error) and err.code == "stale_devices"
        assert await cluster3.storages["n2"].watchers(bob.user_id) == [dave.user_id]


async def test_removed_device_is_purged_closed_and_refused(cluster3) -> None:
    with trio.fail_after(15):
        bob = device_homed_at(cluster3.ring, "n2")
        alice = device_homed_at(cluster3.ring, "n1")
        laptop = bob.companion(1)
        await publish(cluster3.url("n1"), alice)
        assert await publish_list(cluster3.url("n2"), list_of([bob, laptop], 1)) == Ok(id=2)
        n2 = cluster3.storages["n2"]
        both = Recipient(bob.user_id, 1, [Copy(0, b"to phone"), Copy(1, b"to laptop")])
        async with session(cluster3.url("n1"), alice) as a:
            sent = await a.request(Send(id=2, msg_id=os.urandom(16), recipients=[both]))
            assert sent == Sent(id=2, status="stored")
        async with session(cluster3.url("n2"), laptop) as lap:
            await lap.request(UploadKeys(id=2, one_time_keys=laptop.one_time_keys(3)))
            assert await n2.queue_length(bob.user_id, 1) == 1
            assert await n2.count_one_time_keys(bob.user_id, 1) == 3
            # the primary publishes a list without the laptop
            assert await publish_list(cluster3.url("n2"), list_of([bob], 2)) == Ok(id=2)
            err = await lap.recv()
            assert isinstance(err, Error) and (err.id, err.code) == (0, "unknown_device")
            assert "removed" in err.message
        assert await n2.queue_length(bob.user_id, 1) == 0
        assert await n2.count_one_time_keys(bob.user_id, 1) == 0
        assert await n2.claim_key(bob.user_id, 1) is None
        # the phone still has its message and the notice of v2
        kinds = [msgpack.unpackb(i.envelope)["kind"] for i in await n2.read_queue(bob.user_id, 0)]
        assert kinds == ["olm", "device_list"]
        async def refused(device: UserDevice) -> str:
            async with connect(cluster3.url("n2")) as c:
                await c.hello()
                answer = await c.auth(device)
                assert isinstance(answer, Error)
                return answer.code

        assert await refused(laptop) == "unknown_device"
        # the old list cannot be replayed; senders must drop the laptop
        err = await publish_list(cluster3.url("n2"), list_of([bob, laptop], 1))
        assert isinstance(err, Error) and err.code == "stale_version"
        assert await refused(laptop) == "unknown_device"
        async with session(cluster3.url("n1"), alice) as a:
            err = await a.request(Send(id=3, msg_id=os.urandom(16), recipients=[both]))
            assert isinstance(err, Error) and err.code == "stale_devices"
        # re-adding id 1 means a new device with new keys: the old key stays refused
        new_laptop = bob.companion(1)
        assert await publish_list(cluster3.url("n2"), list_of([bob, new_laptop], 3)) == Ok(id=2)
        assert await refused(laptop) == "unauthorized"
        async with session(cluster3.url("n2"), new_laptop) as c:
            await c.send(Sync(id=2))
            (notice,) = await deliveries(c, 1)  # nothing from before its list
            assert notice.envelope.msg_id == notice_msg_id(bob.user_id, 3)


async def test_forged_or_old_lists_change_nothing(cluster3) -> None:
    with trio.fail_after(10):
        bob = device_homed_at(cluster3.ring, "n2")
        mallory = device_homed_at(cluster3.ring, "n2")
        laptop = bob.companion(1)
        assert await publish_list(cluster3.url("n2"), list_of([bob, laptop], 3)) == Ok(id=2)
        n2 = cluster3.storages["n2"]
        await n2.enqueue([(bob.user_id, 1, b"queued")])
        good = list_of([bob], 4)
        forged = SignedDeviceList(body=good.body, signature=list_of([mallory], 4).signature)
        async with session(cluster3.url("n2"), bob) as b:
            err = await b.request(PutDevices(id=2, device_list=forged))
            assert isinstance(err, Error) and err.code == "unauthorized"
            for v in (2, 3):
                err = await b.request(PutDevices(id=3, device_list=list_of([bob], v)))
                assert isinstance(err, Error) and err.code == "stale_version"
        version, _ = await n2.get_device_list(bob.user_id)
        assert version == 3
        assert await n2.queue_length(bob.user_id, 1) == 1  # not purged
        assert await n2.queue_length(bob.user_id, 0) == 0  # no notice


async def test_peer_notify_is_checked(cluster3) -> None:
    with trio.fail_after(10):
        bob = device_homed_at(cluster3.ring, "n2")
        alice = device_homed_at(cluster3.ring, "n1")
        await publish(cluster3.url("n1"), alice)
        signed = list_of([bob], 2)
        body = msgpack.packb({"body": signed.body, "signature": signed.signature})
        env = Envelope(notice_msg_id(bob.user_id, 2), bob.user_id, 0, 1, "device_list", body)
        async with peer_session(cluster3, "n3", "n1") as p:  # bob is not homed at n3
            err = await p.request(Notify(id=3, user_ids=[alice.user_id], envelope=env))
            assert isinstance(err, Error) and err.code == "bad_request"
        async with peer_session(cluster3, "n2", "n1") as p:
            forged = msgpack.packb({"body": signed.body, "signature": bytes(64)})
            cases = [
                (Envelope(env.msg_id, bob.user_id, 0, 1, "device_list", forged), "unauthorized"),
                (Envelope(os.urandom(16), bob.user_id, 0, 1, "device_list", body), "bad_request"),
                (Envelope(env.msg_id, bob.user_id, 0, 1, "olm", body), "bad_request"),
                (Envelope(env.msg_id, bob.user_id, 0, 1, "device_list", b"\xc1"), "bad_request"),
            ]
            for i, (bad, code) in enumerate(cases):
                err = await p.request(Notify(id=4 + i, user_ids=[alice.user_id], envelope=bad))
                assert isinstance(err, Error) and err.code == code, (i, err)
            err = await p.request(Notify(id=9, user_ids=[bob.user_id], envelope=env))
            assert isinstance(err, Error) and err.code == "bad_request"  # bob is not homed here
            assert await cluster3.storages["n1"].queue_length(alice.user_id, 0) == 0
            for rid in (10, 11):  # a repeated notify is queued once
                assert await p.request(Notify(id=rid, user_ids=[alice.user_id],
                                              envelope=env)) == Ok(id=rid)
            assert await cluster3.storages["n1"].queue_length(alice.user_id, 0) == 1


class _CountingStorage:
    """Wraps a MemoryStorage; records the most ``enqueue`` calls in progress at once."""

    def __init__(self, inner) -> None:
        self._inner = inner
        self.active = self.peak = 0

    def __getattr__(self, name):
        return getattr(self._inner, name)

    async def enqueue(self, *args, **kwargs):
        self.active += 1
        self.peak = max(self.peak, self.active)
        try:
            await trio.sleep(0.01)  # (autojump clock) keep the call open so overlaps show
            return await self._inner.enqueue(*args, **kwargs)
        finally:
            self.active -= 1


async def test_deliver_local_serves_many_users_with_bounded_concurrency(autojump_clock) -> None:
    import logging

    from relay.config.ring import Ring
    from relay.services.delivery import DeviceRegistry
    from relay.services.directory import Directory
    from relay.services.notices import NOTICE_WORKERS, DeviceListChanges
    from storage.memory import MemoryStorage

    config = make_configs(1)[0]
    ring = Ring(config.cluster)
    storage = _CountingStorage(MemoryStorage())
    directory = Directory(storage, ring, config.id)  # type: ignore[arg-type]
    users = [UserDevice() for _ in range(3 * NOTICE_WORKERS + 5)]
    for u in users:
        await directory.put_device_list(u.device_list())
    changes = DeviceListChanges(config.id, ring, storage, directory, DeviceRegistry(),  # type: ignore[arg-type]
                                None, None, max_queue=100, timeout=1.0,  # type: ignore[arg-type]
                                log=logging.getLogger("test"))
    env = Envelope(msg_id=b"n" * 16, sender_user=users[0].user_id, sender_device=0, ts=1,
                   kind="device_list", body=b"list")
    ids = [u.user_id for u in users]
    with trio.fail_after(60):
        await changes.deliver_local(ids + ids[:7], env)  # repeats are served once
    assert storage.peak == NOTICE_WORKERS
    for u in users:
        assert [i.seq for i in await storage.read_queue(u.user_id, 0)] == [1]
