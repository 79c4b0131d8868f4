"""group_send / group_forward: one ciphertext fanned out to every member device queue."""

from __future__ import annotations

import dataclasses
import os

import msgpack
import trio
from relay_harness import (
    Cluster,
    UserDevice,
    connect,
    device_homed_at,
    peer_handshake,
    publish,
    published,
    session,
)

from relay.protocol import verify_device_list
from relay.protocol.frames import (
    Deliver,
    DeliverItem,
    Envelope,
    Error,
    GroupForward,
    GroupRecipient,
    GroupSend,
    Ok,
    PeerAuthOk,
    PutDevices,
    Sent,
    Sync,
    Synced,
)
from relay.services.delivery import pack_envelope, unpack_envelope

DEADLINE = 20


def member(dev: UserDevice, ids: list[int], version: int = 1) -> GroupRecipient:
    return GroupRecipient(user_id=dev.user_id, devices_version=version, device_ids=ids)


async def put_list(url: str, dev: UserDevice, extra: int, version: int = 1) -> None:
    """Publish ``dev``'s list with ``extra`` more devices (ids 100, 101, ...)."""
    async with connect(url) as c:
        await c.hello()
        ok = await c.request(PutDevices(id=2, device_list=dev.device_list(version, extra)))
        assert isinstance(ok, Ok), ok


async def queued(cluster: Cluster, dev: UserDevice, device_id: int) -> list:
    """The group envelopes queued for one device at its home (device-list notices skipped)."""
    storage = cluster.storages[cluster.ring.home(dev.user_id).id]
    items = await storage.read_queue(dev.user_id, device_id)
    return [e for e in (unpack_envelope(i.envelope) for i in items) if e.kind != "device_list"]


async def next_delivery(client, kind: str) -> DeliverItem:
    """The next delivered envelope of kind ``kind`` (others are skipped; a deliver
    frame's other envelopes wait on the client for the next call)."""
    buffered: list[DeliverItem] = client.__dict__.setdefault("delivered", [])
    while True:
        while buffered:
            item = buffered.pop(0)
            if item.envelope.kind == kind:
                return item
        frame = await client.recv()
        if isinstance(frame, Deliver):
            buffered.extend(frame.items)


async def test_one_body_fans_out_to_every_device_across_homes(cluster3) -> None:
    with trio.fail_after(DEADLINE):
        alice = device_homed_at(cluster3.ring, "n1")
        others = [device_homed_at(cluster3.ring, n) for n in ("n1", "n2", "n3", "n3")]
        await put_list(cluster3.url("n1"), alice, extra=1)  # alice's other device: 100
        for dev in others:
            await put_list(cluster3.url(cluster3.ring.home(dev.user_id).id), dev, extra=2)
        mid, body = os.urandom(16), os.urandom(300)
        recipients = [member(alice, [100])] + [member(d, [0, 100, 101]) for d in others]
        async with session(cluster3.url("n1"), alice) as a:
            sent = await a.request(GroupSend(id=3, msg_id=mid, body=body, recipients=recipients))
            assert sent == Sent(id=3, status="stored")
            again = await a.request(GroupSend(id=4, msg_id=mid, body=body, recipients=recipients))
            assert again == Sent(id=4, status="stored")  # deduplicated, not written twice
        assert await queued(cluster3, alice, 0) == []  # not the sending device
        (own,) = await queued(cluster3, alice, 100)
        assert (own.kind, own.msg_id, own.body, own.sender_device) == ("group", mid, body, 0)
        for dev in others:
            for device_id in (0, 100, 101):
                (env,) = await queued(cluster3, dev, device_id)
                assert (env.kind, env.msg_id, env.body) == ("group", mid, body)
                assert (env.sender_user, env.sender_device) == (alice.user_id, 0)
        ts = {env.ts for dev in others for d in (0, 100, 101) for env in await queued(cluster3, dev, d)}
        assert len(ts) == 1  # one acceptance time for the whole fan-out


async def test_live_delivery_of_a_group_envelope(cluster3) -> None:
    with trio.fail_after(DEADLINE):
        alice = device_homed_at(cluster3.ring, "n2")
        bob = device_homed_at(cluster3.ring, "n3")
        await publish(cluster3.url("n2"), alice)
        await publish(cluster3.url("n3"), bob)
        async with session(cluster3.url("n3"), bob) as b, session(cluster3.url("n2"), alice) as a:
            await b.send(Sync(id=2))
            while not isinstance(await b.recv(), Synced):
                pass
            mid = os.urandom(16)
            sent = await a.request(GroupSend(id=3, msg_id=mid, body=b"megolm", recipients=[
                member(bob, [0])]))
            assert sent.status == "stored"
            frame = await next_delivery(b, "group")
            assert (frame.envelope.kind, frame.envelope.msg_id, frame.envelope.body) == (
                "group", mid, b"megolm")


async def test_stale_devices_per_member_and_resend(cluster3) -> None:
    with trio.fail_after(DEADLINE):
        alice = device_homed_at(cluster3.ring, "n1")
        bob = device_homed_at(cluster3.ring, "n2")
        carol = device_homed_at(cluster3.ring, "n3")
        dave = device_homed_at(cluster3.ring, "n2")
        await publish(cluster3.url("n1"), alice)
        await put_list(cluster3.url("n2"), bob, extra=1, version=2)  # bob linked device 100
        await publish(cluster3.url("n3"), carol)
        await publish(cluster3.url("n2"), dave)
        mid = os.urandom(16)
        stale = [member(bob, [0]), member(carol, [0]), member(dave, [0])]
        async with session(cluster3.url("n1"), alice) as a:
            err = await a.request(GroupSend(id=3, msg_id=mid, body=b"x", recipients=stale))
            assert isinstance(err, Error) and err.code == "stale_devices"
            assert err.user_id == bob.user_id
            fresh = verify_device_list(err.device_list, bob.user_id)
            assert (fresh.version, fresh.device_ids) == (2, {0, 100})
            # all or nothing at bob's home (dave got nothing); carol's home stored its part
            assert await queued(cluster3, dave, 0) == []
            assert len(await queued(cluster3, carol, 0)) == 1
            fixed = [member(bob, [0, 100], 2), member(carol, [0]), member(dave, [0])]
            ok = await a.request(GroupSend(id=4, msg_id=mid, body=b"x", recipients=fixed))
            assert ok == Sent(id=4, status="stored")
            repeated = [member(carol, [0, 0])]
            err = await a.request(GroupSend(id=5, msg_id=os.urandom(16), body=b"y",
                                            recipients=repeated))
            assert isinstance(err, Error) and err.code == "stale_devices"
            err = await a.request(GroupSend(id=6, msg_id=os.urandom(16), body=b"y",
                                            recipients=[member(carol, [0]), member(carol, [0])]))
            assert isinstance(err, Error) and err.code == "bad_request"
            err = await a.request(GroupSend(id=7, msg_id=os.urandom(16), body=b"y", recipients=[]))
            assert isinstance(err, Error) and err.code == "bad_request"
            err = await a.request(GroupSend(id=8, msg_id=os.urandom(16), body=b"y",
                                            recipients=[member(UserDevice(), [0])]))
            assert isinstance(err, Error) and err.code == "unknown_user"
        assert len(await queued(cluster3, carol, 0)) == 1  # deduplicated on the resend
        for device_id in (0, 100):
            assert [e.msg_id for e in await queued(cluster3, bob, device_id)] == [mid]
        assert [e.msg_id for e in await queued(cluster3, dave, 0)] == [mid]


async def test_too_many_devices_and_peer_only_frame(node1) -> None:
    with trio.fail_after(DEADLINE):
        url = node1.url("n1")
        alice = UserDevice()
        await publish(url, alice)
        async with session(url, alice) as a:
            huge = [GroupRecipient(UserDevice().user_id, 1, list(range(600))) for _ in range(2)]
            err = await a.request(GroupSend(id=3, msg_id=os.urandom(16), body=b"x", recipients=huge))
            assert isinstance(err, Error) and err.code == "too_large"
            fwd = GroupForward(id=4, msg_id=os.urandom(16), sender_user=alice.user_id,
                               sender_device=0, ts=1, body=b"x", recipients=[member(alice, [0])])
            err = await a.request(fwd)
            assert isinstance(err, Error) and err.code == "bad_request"


async def test_member_home_down_goes_to_the_outbox_in_order(cluster2) -> None:
    cluster = cluster2
    with trio.fail_after(DEADLINE):
        alice = device_homed_at(cluster.ring, "n1")
        bob = device_homed_at(cluster.ring, "n2")
        carol = device_homed_at(cluster.ring, "n1")
        await publish(cluster.url("n1"), alice)
        await put_list(cluster.url("n2"), bob, extra=1)
        await publish(cluster.url("n1"), carol)
        cluster.stop("n2")
        ids = [os.urandom(16) for _ in range(3)]
        async with session(cluster.url("n1"), alice) as a:
            for i, mid in enumerate(ids):
                sent = await a.request(GroupSend(id=i + 2, msg_id=mid, body=bytes([i]), recipients=[
                    member(bob, [0, 100]), member(carol, [0])]))
                assert sent == Sent(id=i + 2, status="queued")
            assert len(await cluster.storages["n1"].outbox_list("n2")) == 3
            assert [e.msg_id for e in await queued(cluster, carol, 0)] == ids  # local part now
            await cluster.start("n2")
            async with session(cluster.url("n2"), bob) as b:
                await b.send(Sync(id=2))
                got = [await next_delivery(b, "group") for _ in range(3)]
                assert [d.envelope.msg_id for d in got] == ids
                assert [d.envelope.kind for d in got] == ["group"] * 3
        while await cluster.storages["n1"].outbox_list("n2"):  # noqa: ASYNC110 - poll, deadline above
            await trio.sleep(0.01)
        assert [e.body for e in await queued(cluster, bob, 100)] == [b"\x00", b"\x01", b"\x02"]


async def test_final_rejection_of_a_queued_group_part_bounces(cluster2_n1_only) -> None:
    cluster = cluster2_n1_only
    with trio.fail_after(DEADLINE):
        (alice,) = await published(cluster, "n1")
        bob = device_homed_at(cluster.ring, "n2")  # never publishes a device list
        mid = os.urandom(16)
        async with session(cluster.url("n1"), alice) as a:
            await a.send(Sync(id=2))
            sent = await a.request(GroupSend(id=3, msg_id=mid, body=b"x", recipients=[
                member(bob, [0])]))
            assert sent.status == "queued"
            await cluster.start("n2")
            frame = await next_delivery(a, "bounce")
            assert frame.envelope.msg_id == mid
            info = msgpack.unpackb(frame.envelope.body)
            assert info["code"] == "unknown_user" and info["user_id"] == bob.user_id


async def test_group_forward_only_from_the_senders_home(cluster3) -> None:
    with trio.fail_after(DEADLINE):
        alice = device_homed_at(cluster3.ring, "n1")
        bob = device_homed_at(cluster3.ring, "n2")
        await publish(cluster3.url("n2"), bob)
        n3 = next(c for c in cluster3.configs if c.id == "n3")
        fwd = GroupForward(id=5, msg_id=os.urandom(16), sender_user=alice.user_id,
                           sender_device=0, ts=1, body=b"x", recipients=[member(bob, [0])])
        async with connect(cluster3.url("n2")) as c:
            await c.hello(handshake=peer_handshake(cluster3, "n3", "n2"))
            err = await c.request(fwd)  # not authenticated yet
            assert isinstance(err, Error) and err.code == "unauthorized"
            assert isinstance(await c.peer_auth("n3", n3.signing_key), PeerAuthOk)
            # n3 is a peer, but alice's home is n1: n3 cannot speak for her
            err = await c.request(dataclasses.replace(fwd, id=7))
            assert isinstance(err, Error) and err.code == "bad_request"
            carol = device_homed_at(cluster3.ring, "n3")
            own = dataclasses.replace(fwd, id=8, sender_user=carol.user_id)
            assert isinstance(await c.request(own), Ok)
        assert await queued(cluster3, bob, 0) == [unpack_envelope(pack(own))]


def pack(fwd: GroupForward) -> bytes:
    return pack_envelope(Envelope(fwd.msg_id, fwd.sender_user, fwd.sender_device, fwd.ts, "group",
                                  fwd.body))
