"""Hostile input: every bad frame gets an error frame or a close code; the node keeps serving."""

from __future__ import annotations

import contextlib
import logging
import os

import msgpack
import pytest
import trio
from relay_harness import Cluster, UserDevice, connect, make_configs, publish, session
from trio_websocket import ConnectionClosed

from relay.net import ConnectionLost
from relay.protocol import encode
from relay.protocol.frames import Ack, Deliver, Envelope, Error, Ok, Ping, Sync, Synced
from relay.protocol.stored import encode_envelope
from storage.memory import MemoryStorage


async def _expect_close(client) -> int:
    """Read until the node closes; return the close code."""
    with pytest.raises(ConnectionLost):
        while True:
            await client.recv()
    return client.close_code


async def _still_serving(url: str) -> None:
    dev = UserDevice()
    assert isinstance(await publish(url, dev), Ok)
    async with session(url, dev) as c:
        assert await c.request(Ping(id=77)) == Ok(id=77)


BAD_FRAMES = [
    os.urandom(64),
    bytes.fromhex("ddffffffff"),  # array32 claiming 4 G entries
    bytes.fromhex("dfffffffff"),  # map32 claiming 4 G entries
    bytes.fromhex("c6ffffffff") + b"x" * 10,  # bin32 claiming 4 GiB
    msgpack.packb({1: "non-string key", "t": "ping", "id": 3}),
    encode({"t": "ping", "id": "three"}),  # wrong field type
    encode({"t": "hello", "id": 3, "versions": "1", "role": "client"}),
    encode({"t": "no-such-type", "id": 3}),
    msgpack.packb([1, 2, 3]),
    b"",
]


@pytest.mark.parametrize("data", BAD_FRAMES, ids=range(len(BAD_FRAMES)))
async def test_bad_frame_gets_error_and_connection_stays(node1, data: bytes) -> None:
    with trio.fail_after(10):
        url = node1.url("n1")
        async with connect(url) as c:
            await c.ws.send_message(data)
            err = await c.recv()
            assert isinstance(err, Error) and err.code == "bad_frame"
            assert err.id in (0, 3)
            await c.hello()  # the connection still works
            assert await c.request(Ping(id=9)) == Ok(id=9)
        await _still_serving(url)


def _deep(depth: int, level: bytes) -> bytes:
    return level * depth + b"\xc0"


# Deeply nested values (msgpack decodes up to 1024 levels, more than Python's
# recursion limit): as the frame type, as a typed field, and as the whole frame.
DEEP_FRAMES = {
    "t: arrays": b"\x82\xa1t" + _deep(1000, b"\x91") + b"\xa2id\x03",
    "t: maps": b"\x82\xa1t" + _deep(1000, b"\x81\xa1k") + b"\xa2id\x03",
    "versions: arrays": b"\x84\xa1t\xa5hello\xa2id\x03\xa4role\xa6client\xa8versions"
    + _deep(1010, b"\x91"),
    "versions: maps": b"\x84\xa1t\xa5hello\xa2id\x03\xa4role\xa6client\xa8versions"
    + _deep(1010, b"\x81\xa1k"),
    "100 000 arrays": _deep(100_000, b"\x91"),
}


@pytest.mark.parametrize("name", sorted(DEEP_FRAMES))
async def test_deeply_nested_frame_is_bad_frame_without_error_logs(node1, caplog, name) -> None:
    with trio.fail_after(10):
        url = node1.url("n1")
        async with connect(url) as c:
            for _ in range(3):  # fewer than five bad frames in a row: the connection stays
                await c.ws.send_message(DEEP_FRAMES[name])
                err = await c.recv()
                assert isinstance(err, Error) and err.code == "bad_frame", err
                assert err.id in (0, 3)
                assert err.message and len(err.message) < 200
            await c.hello()
            assert await c.request(Ping(id=9)) == Ok(id=9)
        await _still_serving(url)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text


async def test_deeply_nested_unknown_field_is_ignored(node1) -> None:
    with trio.fail_after(10):
        async with connect(node1.url("n1")) as c:
            await c.ws.send_message(
                b"\x85\xa1t\xa5hello\xa2id\x03\xa4role\xa6client\xa8versions\x91\x02\xa1x"
                + _deep(1020, b"\x91"))
            assert (await c.recv()).TYPE == "challenge"


async def test_five_bad_frames_close_1008(node1) -> None:
    with trio.fail_after(10):
        url = node1.url("n1")
        async with connect(url) as c:
            for _ in range(5):
                await c.ws.send_message(b"\xc1")
            codes = [(await c.recv()).code for _ in range(5)]
            assert codes == ["bad_frame"] * 5
            assert await _expect_close(c) == 1008
        await _still_serving(url)


async def test_text_frame_closes_1003(node1) -> None:
    with trio.fail_after(10):
        url = node1.url("n1")
        async with connect(url) as c:
            await c.ws.send_message('{"t": "hello"}')
            assert (await c.recv()).code == "bad_frame"
            assert await _expect_close(c) == 1003
        await _still_serving(url)


async def test_oversized_frames_close_1009(nursery) -> None:
    cluster = Cluster(nursery, make_configs(1, max_frame=64 * 1024))
    await cluster.start("n1")
    with trio.fail_after(10):
        url = cluster.url("n1")
        async with connect(url) as c:  # just above max_frame: error frame, then close
            await c.ws.send_message(b"\x00" * (64 * 1024 + 1))
            assert (await c.recv()).code == "too_large"
            assert await _expect_close(c) == 1009
        async with connect(url) as c:  # far above: closed by the WebSocket layer
            with contextlib.suppress(ConnectionClosed):  # the node may close while we send
                await c.ws.send_message(b"\x00" * (1024 * 1024))
            assert await _expect_close(c) == 1009
        await _still_serving(url)


async def test_many_garbage_clients_in_parallel(node1) -> None:
    with trio.fail_after(20):
        url = node1.url("n1")

        async def garbage(i: int) -> None:
            async with connect(url) as c:
                for _ in range(20):
                    try:
                        await c.ws.send_message(os.urandom(i % 50 + 1))
                    except ConnectionClosed:
                        return

        async with trio.open_nursery() as nursery:
            for i in range(20):
                nursery.start_soon(garbage, i)
        await _still_serving(url)


class _BrokenAck(MemoryStorage):
    async def ack_many(self, acks: list[tuple[str, int, int]]) -> list[int]:
        raise RuntimeError("simulated bug")


async def test_unexpected_exception_is_internal_and_1011(nursery) -> None:
    cluster = Cluster(nursery, make_configs(1))
    cluster.storages["n1"] = _BrokenAck()
    await cluster.start("n1")
    with trio.fail_after(10):
        url = cluster.url("n1")
        dev = UserDevice()
        await publish(url, dev)
        env = encode_envelope(Envelope(b"m" * 16, dev.user_id, 0, 1, "olm", b"x"))
        await cluster.storages["n1"].enqueue([(dev.user_id, 0, env)])
        async with session(url, dev) as c:
            await c.send(Sync(id=2))
            assert isinstance(await c.recv(), Deliver)  # acks are clamped to what was delivered
            assert isinstance(await c.recv(), Synced)
            await c.send(Ack(id=0, seq=1))
            err = await c.recv()
            assert isinstance(err, Error) and err.code == "internal"
            assert await _expect_close(c) == 1011
        await _still_serving(url)


@pytest.mark.parametrize("user_id", ["\u00e9" * 52, "\u0430" * 52, "A" * 52], ids=["latin", "cyrillic", "upper"])
async def test_non_base32_user_ids_are_bad_request(node1, user_id: str) -> None:
    # Non-ASCII look-alikes used to raise ValueError in the base32 decoder: ``internal``, 1011.
    from relay.protocol.frames import ClaimKeys, Copy, GetDevices, Recipient, Send

    with trio.fail_after(10):
        url = node1.url("n1")
        dev = UserDevice()
        await publish(url, dev)
        async with session(url, dev) as c:
            for frame in (
                GetDevices(id=c.next_id(), user_id=user_id),
                ClaimKeys(id=c.next_id(), user_id=user_id, device_ids=[0]),
                Send(id=c.next_id(), msg_id=os.urandom(16),
                     recipients=[Recipient(user_id, 1, [Copy(0, b"c")])]),
            ):
                err = await c.request(frame)
                assert isinstance(err, Error) and err.code == "bad_request", err
            rid = c.next_id()
            assert await c.request(Ping(id=rid)) == Ok(id=rid)
        await _still_serving(url)
