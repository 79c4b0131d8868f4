"""Handshake and device authentication against in-process nodes."""

from __future__ import annotations

import pytest
import trio
from relay_harness import UserDevice, connect, device_homed_at, publish, session

from relay.net import ConnectionLost
from relay.protocol import auth_message
from relay.protocol.frames import Auth, AuthOk, Error, Hello, Ok, Ping


async def test_hello_challenge_and_auth(node1) -> None:
    with trio.fail_after(10):
        url = node1.url("n1")
        dev = UserDevice()
        assert isinstance(await publish(url, dev), Ok)
        async with connect(url) as c:
            ch = await c.hello()
            assert ch.node_id == "n1" and ch.version == 2 and ch.window == 128 and len(ch.nonce) == 32
            assert ch.ring_version == node1.ring.version
            ok = await c.auth(dev)
            assert ok == AuthOk(id=ok.id, otk_count=0, cluster=[url])  # every node's URL
            assert await c.request(Ping(id=40)) == Ok(id=40)


async def test_fresh_nonce_per_connection(node1) -> None:
    with trio.fail_after(10):
        url = node1.url("n1")
        async with connect(url) as a, connect(url) as b:
            assert (await a.hello()).nonce != (await b.hello()).nonce


async def test_unsupported_version(node1) -> None:
    with trio.fail_after(10):
        async with connect(node1.url("n1")) as c:
            err = await c.request(Hello(id=1, versions=[99], role="client"))
            assert isinstance(err, Error) and err.code == "unsupported_version"


async def test_bad_signature_unknown_user_unknown_device(node1) -> None:
    with trio.fail_after(10):
        url = node1.url("n1")
        dev = UserDevice()
        await publish(url, dev)
        async with connect(url) as c:
            ch = await c.hello()
            # signed for another node id
            sig = dev.sign(auth_message(ch.nonce, "n2", dev.user_id, 0))
            err = await c.request(Auth(id=2, user_id=dev.user_id, device_id=0, signature=sig))
            assert isinstance(err, Error) and err.code == "unauthorized"
            err = await c.request(Auth(id=3, user_id=dev.user_id, device_id=7, signature=sig))
            assert isinstance(err, Error) and err.code == "unknown_device"
            other = UserDevice()
            err = await c.request(Auth(id=4, user_id=other.user_id, device_id=0, signature=sig))
            assert isinstance(err, Error) and err.code == "unknown_user"
            err = await c.request(Auth(id=5, user_id="not-a-user", device_id=0, signature=sig))
            assert isinstance(err, Error) and err.code == "bad_request"
            # the connection still works and a correct auth succeeds
            assert isinstance(await c.auth(dev), AuthOk)


async def test_auth_with_a_key_not_in_the_list(node1) -> None:
    with trio.fail_after(10):
        url = node1.url("n1")
        dev = UserDevice()
        await publish(url, dev)
        impostor = UserDevice(account_key=dev.account_key)  # same user, other device key
        async with connect(url) as c:
            await c.hello()
            err = await c.auth(impostor)
            assert isinstance(err, Error) and err.code == "unauthorized"


async def test_moved_to_home(cluster3) -> None:
    with trio.fail_after(10):
        dev = device_homed_at(cluster3.ring, "n2")
        err = await publish(cluster3.url("n1"), dev)
        assert isinstance(err, Error) and err.code == "moved" and err.url == cluster3.url("n2")
        assert isinstance(await publish(cluster3.url("n2"), dev), Ok)
        async with connect(cluster3.url("n3")) as c:
            await c.hello()
            err = await c.auth(dev)
            assert isinstance(err, Error) and err.code == "moved"
            assert err.url == cluster3.url("n2")
        async with session(cluster3.url("n2"), dev):
            pass


async def test_requests_before_auth_are_refused(node1) -> None:
    with trio.fail_after(10):
        from relay.protocol.frames import GetDevices

        async with connect(node1.url("n1")) as c:
            await c.hello()
            err = await c.request(GetDevices(id=2, user_id=UserDevice().user_id))
            assert isinstance(err, Error) and err.code == "unauthorized"


async def test_a_newer_connection_replaces_the_older(node1) -> None:
    with trio.fail_after(10):
        url = node1.url("n1")
        dev = UserDevice()
        await publish(url, dev)
        async with session(url, dev) as old, session(url, dev) as new:
            assert await new.request(Ping(id=5)) == Ok(id=5)
            with pytest.raises(ConnectionLost):
                while True:
                    await old.recv()
            assert old.close_code is not None


async def test_link_open_is_allowed_before_auth(node1) -> None:
    from relay.protocol.frames import LinkOpen, LinkOpened

    with trio.fail_after(10):
        async with connect(node1.url("n1")) as c:
            await c.hello()
            opened = await c.request(LinkOpen(id=2, device_info=b"x"))
            assert isinstance(opened, LinkOpened) and opened.id == 2
            assert opened.node_id == "n1" and len(opened.mailbox_id) == 16
            assert opened.expires_in == 120
            err = await c.request(LinkOpen(id=3, device_info=b""))
            assert isinstance(err, Error) and err.code == "bad_request"
            assert await c.request(Ping(id=4)) == Ok(id=4)
