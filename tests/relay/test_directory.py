"""Key directory over the wire: device lists, one-time keys, claims (also across nodes)."""

from __future__ import annotations

import trio
from relay_harness import UserDevice, connect, device_homed_at, publish, session

from relay.protocol import verify_device_list
from relay.protocol.frames import (
    Claimed,
    ClaimKeys,
    Devices,
    Error,
    GetDevices,
    KeyCount,
    Ok,
    OneTimeKey,
    PutDevices,
    UploadKeys,
)


async def test_put_and_get_devices(cluster3) -> None:
    with trio.fail_after(10):
        alice = device_homed_at(cluster3.ring, "n1")
        bob = device_homed_at(cluster3.ring, "n2")
        assert isinstance(await publish(cluster3.url("n1"), alice), Ok)
        assert isinstance(await publish(cluster3.url("n2"), bob), Ok)
        async with session(cluster3.url("n1"), alice) as c:
            local = await c.request(GetDevices(id=5, user_id=alice.user_id))
            assert isinstance(local, Devices)
            assert verify_device_list(local.device_list, alice.user_id).version == 1
            remote = await c.request(GetDevices(id=6, user_id=bob.user_id))  # via n2
            assert isinstance(remote, Devices) and remote.id == 6
            assert verify_device_list(remote.device_list, bob.user_id).device_ids == {0}
            missing = await c.request(GetDevices(id=7, user_id=UserDevice().user_id))
            assert isinstance(missing, Error) and missing.code == "unknown_user"


async def test_device_list_version_must_grow(node1) -> None:
    with trio.fail_after(10):
        url = node1.url("n1")
        dev = UserDevice()
        assert isinstance(await publish(url, dev, version=2), Ok)
        for v in (1, 2):
            err = await publish(url, dev, version=v)
            assert isinstance(err, Error) and err.code == "stale_version"
        assert isinstance(await publish(url, dev, version=3), Ok)


async def test_forged_device_list_is_unauthorized(node1) -> None:
    with trio.fail_after(10):
        dev, mallory = UserDevice(), UserDevice()
        signed = dev.device_list()
        forged = type(signed)(body=signed.body, signature=mallory.device_list().signature)
        async with connect(node1.url("n1")) as c:
            await c.hello()
            err = await c.request(PutDevices(id=2, device_list=forged))
            assert isinstance(err, Error) and err.code == "unauthorized"
            garbage = type(signed)(body=b"\x93\x01\x02\x03", signature=b"x" * 64)
            err = await c.request(PutDevices(id=3, device_list=garbage))
            assert isinstance(err, Error) and err.code == "bad_request"
            huge = type(signed)(body=signed.body + bytes(64 * 1024), signature=signed.signature)
            err = await c.request(PutDevices(id=4, device_list=huge))
            assert isinstance(err, Error) and err.code == "too_large"
            assert "65536 bytes" in err.message


async def test_upload_and_claim_keys(cluster3) -> None:
    with trio.fail_after(10):
        bob = device_homed_at(cluster3.ring, "n2")
        alice = device_homed_at(cluster3.ring, "n3")
        await publish(cluster3.url("n2"), bob)
        await publish(cluster3.url("n3"), alice)
        keys = bob.one_time_keys(3)
        fallback = OneTimeKey("fb1", b"f" * 32)
        async with session(cluster3.url("n2"), bob) as b:
            count = await b.request(UploadKeys(id=3, one_time_keys=keys, fallback_key=fallback))
            assert count == KeyCount(id=3, otk_count=3)
            # an id stored (or claimed) already is left out, the rest is stored
            dup = await b.request(UploadKeys(id=4, one_time_keys=[keys[0], OneTimeKey("new", b"n" * 32)]))
            assert dup == KeyCount(id=4, otk_count=4)
            again = await b.request(UploadKeys(id=6, one_time_keys=[keys[1]]))  # a retry
            assert again == KeyCount(id=6, otk_count=4)
            bad = await b.request(UploadKeys(id=5, one_time_keys=[OneTimeKey("short", b"k")]))
            assert isinstance(bad, Error) and bad.code == "bad_request"
        async with session(cluster3.url("n2"), bob) as b:
            # nothing of the refused uploads was stored
            assert b.challenge is not None
        async with session(cluster3.url("n3"), alice) as a:
            got = []
            for i in range(5):
                claimed = await a.request(ClaimKeys(id=10 + i, user_id=bob.user_id, device_ids=[0]))
                assert isinstance(claimed, Claimed) and len(claimed.keys) == 1
                got.append(claimed.keys[0])
            assert sorted((k.key_id, k.key) for k in got[:4]) == sorted(
                [(k.key_id, k.key) for k in keys] + [("new", b"n" * 32)])
            assert [k.fallback for k in got] == [False, False, False, False, True]
            assert got[4].key_id == "fb1" and got[4].key == b"f" * 32
            err = await a.request(ClaimKeys(id=20, user_id=bob.user_id, device_ids=[5]))
            assert isinstance(err, Error) and err.code == "unknown_device"


async def test_concurrent_claims_hand_out_each_key_once(node1) -> None:
    with trio.fail_after(20):
        url = node1.url("n1")
        bob = UserDevice()
        await publish(url, bob)
        keys = bob.one_time_keys(30)
        async with session(url, bob) as b:
            assert (await b.request(UploadKeys(id=3, one_time_keys=keys))).otk_count == 30
        claimers = [UserDevice() for _ in range(8)]
        for c in claimers:
            await publish(url, c)
        got: list[str] = []

        async def claim_many(dev: UserDevice) -> None:
            async with session(url, dev) as c:
                for i in range(5):
                    claimed = await c.request(ClaimKeys(id=100 + i, user_id=bob.user_id, device_ids=[0]))
                    got.extend(k.key_id for k in claimed.keys)

        async with trio.open_nursery() as nursery:
            for c in claimers:
                nursery.start_soon(claim_many, c)
        assert len(got) == 30 and sorted(got) == sorted(k.key_id for k in keys)


async def test_keys_low_push(node1) -> None:
    with trio.fail_after(10):
        url = node1.url("n1")
        bob, alice = UserDevice(), UserDevice()
        await publish(url, bob)
        await publish(url, alice)
        async with session(url, bob) as b:
            await b.request(UploadKeys(id=3, one_time_keys=bob.one_time_keys(21)))
            async with session(url, alice) as a:
                await a.request(ClaimKeys(id=3, user_id=bob.user_id, device_ids=[0]))  # 20 left
                await a.request(ClaimKeys(id=4, user_id=bob.user_id, device_ids=[0]))  # 19 left
            push = await b.recv()
            assert push == KeyCount(id=0, otk_count=19)


async def test_concurrent_claims_through_different_nodes(cluster3) -> None:
    with trio.fail_after(20):
        bob = device_homed_at(cluster3.ring, "n2")
        await publish(cluster3.url("n2"), bob)
        keys = bob.one_time_keys(20)  # fewer than a device's claim burst (30)
        async with session(cluster3.url("n2"), bob) as b:
            up = await b.request(UploadKeys(id=3, one_time_keys=keys,
                                            fallback_key=OneTimeKey("fb", b"f" * 32)))
            assert up.otk_count == 20
        claimers = [device_homed_at(cluster3.ring, "n1"), device_homed_at(cluster3.ring, "n3")]
        for c, home in zip(claimers, ("n1", "n3"), strict=True):
            await publish(cluster3.url(home), c)
        got: list[tuple[str, bool]] = []

        async def claim_many(dev: UserDevice, home: str) -> None:
            async with session(cluster3.url(home), dev) as c:
                for i in range(25):  # pipelined: the two nodes' claims interleave at n2
                    await c.send(ClaimKeys(id=100 + i, user_id=bob.user_id, device_ids=[0]))
                for _ in range(25):
                    claimed = await c.recv()
                    assert isinstance(claimed, Claimed), claimed
                    got.extend((k.key_id, k.fallback) for k in claimed.keys)

        async with trio.open_nursery() as nursery:
            for c, home in zip(claimers, ("n1", "n3"), strict=True):
                nursery.start_soon(claim_many, c, home)
        one_time = [k for k, fallback in got if not fallback]
        assert sorted(one_time) == sorted(k.key_id for k in keys)  # each handed out once
        # the rest: the fallback key (keys ran out, then the device's claim budget did)
        assert [k for k, fallback in got if fallback] == ["fb"] * 30
