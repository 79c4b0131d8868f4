"""Garbage input against a real ``wa-relay serve`` process over trio-websocket.

Each malformed frame gets an ``error`` frame or a WebSocket close code, the node
stays up with bounded memory, and other clients keep completing the handshake
(docs/protocol.md, "Limits"; issue 2, "Garbage input").
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace

import msgpack
import pytest
import trio
from trio_websocket import ConnectionClosed, WebSocketConnection

from relay.net import open_websocket
from relay.protocol import DEFAULT_LIMITS, write_frame
from relay.protocol.handshake import Handshake

from .procs import vm_rss_kib

MiB = 1024 * 1024
RSS_GROWTH_LIMIT_KIB = 50 * 1024
STEP_TIMEOUT = 10.0  # seconds for the node to answer one frame

HELLO = write_frame(replace(Handshake("client", "e2e-garbage").hello(), id=7))


@dataclass
class Reply:
    """What the node sent back: decoded frames in order and the close code (or ``None``)."""

    frames: list[dict]
    close_code: int | None

    def types(self) -> list[str]:
        return [f.get("t") for f in self.frames]


def _unpack(message: bytes | str) -> dict:
    assert isinstance(message, bytes), f"node sent a text frame: {message!r}"
    frame = msgpack.unpackb(message, raw=False)
    assert isinstance(frame, dict) and isinstance(frame.get("t"), str), frame
    return frame


@asynccontextmanager
async def open_ws(url: str) -> AsyncIterator[WebSocketConnection]:
    """A raw client WebSocket (:func:`relay.net.open_websocket`: its stream is always
    closed, also when the node resets the connection during a send)."""
    async with open_websocket(url, connect_timeout=STEP_TIMEOUT,
                              max_message_size=DEFAULT_LIMITS.max_peer_frame,
                              shield_close=False) as sock:
        yield sock.ws


async def poke(url: str, *payloads: bytes | str, then_hello: bool = False) -> Reply:
    """Open a connection, send each payload and read one answer per payload; then
    (``then_hello``) a hello and its answer; otherwise read until the node closes.
    Returns as soon as the node closes the connection."""
    frames: list[dict] = []
    async with open_ws(url) as ws:
        try:
            with trio.fail_after(STEP_TIMEOUT * (len(payloads) + 2)):
                for payload in payloads:
                    await ws.send_message(payload)
                    frames.append(_unpack(await ws.get_message()))
                if then_hello:
                    await ws.send_message(HELLO)
                    frames.append(_unpack(await ws.get_message()))
                    return Reply(frames, None)
                while True:
                    frames.append(_unpack(await ws.get_message()))
        except ConnectionClosed as exc:
            return Reply(frames, exc.reason.code)


def _random_payloads(seed: int, count: int) -> list[bytes]:
    rng = random.Random(seed)
    return [rng.randbytes(rng.randrange(1, 2048)) for _ in range(count)]


# Frames that cannot be decoded or validated: ``error bad_frame``, connection stays open.
BAD_FRAMES = {
    "gigabyte array length": b"\xdd\xff\xff\xff\xff",
    "gigabyte bin length": b"\xc6\xff\xff\xff\xff",
    "gigabyte str length": b"\xdb\xff\xff\xff\xff",
    "gigabyte map length": b"\xdf\xff\xff\xff\xff",
    "truncated map": b"\x83\xa1t\xa5hello",
    "top-level array": msgpack.packb([1, 2, 3]),
    "ext type": msgpack.packb(msgpack.ExtType(5, b"xyz")),
    "unknown frame type": msgpack.packb({"t": "launch_missiles", "id": 3}),
    "wrong field types": msgpack.packb({"t": "hello", "id": 1, "versions": "1", "role": 7}),
    "string request id": msgpack.packb({"t": "hello", "id": "one", "versions": [1], "role": "client"}),
    "negative request id": msgpack.packb({"t": "ping", "id": -5}),
    "non-string map keys": msgpack.packb({1: 2, "t": "hello", "id": 1, "versions": [1], "role": "client"}),
    "nested non-string keys": msgpack.packb(
        {"t": "put_devices", "id": 2, "device_list": {b"body": b"x", 9: b"y"}}
    ),
    "bytes where str expected": msgpack.packb(
        {"t": "get_devices", "id": 4, "user_id": b"\x00" * 52}, use_bin_type=True
    ),
    **{f"random bytes #{i}": p for i, p in enumerate(_random_payloads(2026, 6))},
    # Deep nesting: msgpack decodes up to 1024 levels, more than Python's recursion limit.
    "100 000 nested arrays": b"\x91" * 100_000 + b"\xc0",
    "100 000 nested maps": b"\x81\xa1k" * 100_000 + b"\xc0",
    "1000 nested arrays as the frame type": b"\x81\xa1t" + b"\x91" * 1000 + b"\xc0",
    "1000 nested maps as the frame type": b"\x81\xa1t" + b"\x81\xa1k" * 1000 + b"\xc0",
    "1020 nested arrays in a hello field": b"\x84\xa1t\xa5hello\xa2id\x07\xa4role\xa6client"
    b"\xa8versions" + b"\x91" * 1020 + b"\x01",
    "1020 nested maps and arrays in a hello field": b"\x84\xa1t\xa5hello\xa2id\x07"
    b"\xa4role\xa6client\xa8versions" + b"\x81\xa1k\x91" * 510 + b"\x01",
}

# A valid hello carrying a deeply nested unknown field: ignored, answered by a challenge.
DEEP_EXTRA_HELLO = (b"\x85\xa1t\xa5hello\xa2id\x07\xa4role\xa6client\xa8versions\x91\x02"
                    b"\xa1x" + b"\x91" * 1020 + b"\xc0")


@pytest.fixture
def node(single_node):
    """The one running node of a one-node cluster: ``(url, pid)``."""
    n = single_node.node("n1")
    return n.url, n.pid


async def check_handshake(url: str) -> dict:
    """A fresh client completes hello -> challenge; returns the challenge."""
    reply = await poke(url, then_hello=True)
    assert reply.close_code is None
    (challenge,) = reply.frames
    assert challenge["t"] == "challenge"
    assert challenge["id"] == 7
    assert challenge["version"] == 2
    assert challenge["node_id"] == "n1"
    assert isinstance(challenge["nonce"], bytes) and len(challenge["nonce"]) == 32
    return challenge


async def test_garbage_gets_errors_or_close_codes(node, single_node):
    url, pid = node
    with trio.fail_after(120):
        first = await check_handshake(url)
        rss_before = vm_rss_kib(pid)

        for name, payload in BAD_FRAMES.items():
            reply = await poke(url, payload, then_hello=True)
            assert reply.close_code is None, f"{name}: closed with {reply.close_code}"
            assert reply.types() == ["error", "challenge"], f"{name}: {reply.frames}"
            assert reply.frames[0]["code"] == "bad_frame", f"{name}: {reply.frames[0]}"
            assert 0 < len(reply.frames[0]["message"]) < 200, f"{name}: {reply.frames[0]}"

        reply = await poke(url, DEEP_EXTRA_HELLO, then_hello=True)  # the second hello: refused
        assert reply.types() == ["challenge", "error"], reply
        assert reply.frames[0]["id"] == 7
        assert reply.frames[1]["code"] == "bad_request", reply

        # An oversized frame: ``error too_large`` and/or close 1009.
        reply = await poke(url, b"\x00" * (MiB + 1))
        assert reply.close_code == 1009, reply
        assert all(f["t"] == "error" and f["code"] == "too_large" for f in reply.frames), reply

        # A text frame: close 1003 (an error frame before it is allowed).
        reply = await poke(url, '{"t": "hello"}')
        assert reply.close_code == 1003, reply
        assert all(f["t"] == "error" and f["code"] == "bad_frame" for f in reply.frames), reply

        # Five bad frames in a row close the connection with 1008.
        reply = await poke(url, *_random_payloads(7, 8))
        assert reply.close_code == 1008, reply
        assert 1 <= len(reply.frames) <= 5, reply
        assert all(f["t"] == "error" for f in reply.frames), reply

        # Stress: many gigabyte claims and oversized frames, some at once.
        for _ in range(40):
            reply = await poke(url, *[b"\xdd\xff\xff\xff\xff"] * 4, then_hello=True)
            assert reply.types() == ["error"] * 4 + ["challenge"], reply

        async def oversized(size: int) -> None:
            assert (await poke(url, b"\xc4" + b"\x01" * size)).close_code == 1009

        async with trio.open_nursery() as nursery:
            for i in range(8):
                nursery.start_soon(oversized, MiB + 64 * i)
        for _ in range(8):
            assert (await poke(url, b"\x00" * (2 * MiB))).close_code == 1009

        single_node.assert_running()
        rss_after = vm_rss_kib(pid)
        assert rss_after - rss_before < RSS_GROWTH_LIMIT_KIB, (rss_before, rss_after)

        # The node keeps serving other clients.
        again = await check_handshake(url)
        assert again["nonce"] != first["nonce"]
        assert again["ring_version"] == first["ring_version"]
    single_node.assert_running()
    single_node.assert_clean_logs()
    assert " ERROR " not in single_node.stderr_text("n1")
