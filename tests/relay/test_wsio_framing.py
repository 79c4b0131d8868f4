"""The node's own WebSocket framing (relay.net.wsio): outgoing binary messages are
framed exactly as wsproto would frame them, and the server's fast parser of incoming
frames yields exactly wsproto's events, whatever the frames and however the bytes are
split across reads."""

from __future__ import annotations

import os
import random

import pytest
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, Request
from wsproto.frame_protocol import FrameProtocol

from relay.net.wsio import FastServerWS, frame_binary, unmask


@pytest.mark.parametrize("size", [0, 1, 125, 126, 127, 65535, 65536, 70000])
def test_frame_binary_is_what_wsproto_writes(size: int) -> None:
    proto = FrameProtocol(client=False, extensions=[])
    message = os.urandom(size)
    assert frame_binary([message]) == bytes(proto.send_data(message, True))


def test_frame_binary_concatenates_in_order() -> None:
    proto = FrameProtocol(client=False, extensions=[])
    messages = [os.urandom(n) for n in (3, 200, 0, 70000, 10)]
    assert frame_binary(messages) == b"".join(bytes(proto.send_data(m, True)) for m in messages)
    assert frame_binary([]) == b""


def test_unmask() -> None:
    key = bytes([1, 2, 3, 4])
    assert unmask(b"", key) == b""
    assert unmask(bytes(7), key) == bytes([1, 2, 3, 4, 1, 2, 3])
    data = os.urandom(301)
    assert unmask(unmask(data, key), key) == data


def _opened(server: WSConnection) -> None:
    client = WSConnection(ConnectionType.CLIENT)
    server.receive_data(client.send(Request(host="x", target="/")))
    [request] = server.events()
    assert isinstance(request, Request)
    server.send(AcceptConnection())


def _stream(rng: random.Random) -> bytes:
    """Client frames: mostly binary messages of every length encoding, with pings,
    text, a fragmented message, and (sometimes) a malformed frame or a close."""
    proto = FrameProtocol(client=True, extensions=[])
    out = []
    for _ in range(rng.randrange(1, 40)):
        kind = rng.random()
        if kind < 0.7:
            out.append(proto.send_data(os.urandom(rng.choice([0, 5, 125, 126, 300, 70000])), True))
        elif kind < 0.8:
            out.append(proto.ping(os.urandom(rng.randrange(0, 20))))
        elif kind < 0.85:
            out.append(proto.send_data("héllo", True))
        elif kind < 0.9:
            out.append(proto.send_data(b"part one ", False))
            out.append(proto.send_data(b"part two", True))
        elif kind < 0.93:  # a 16-bit length used for 5 bytes: a protocol error
            out.append(bytes([0x82, 0xFE, 0, 5, 0, 0, 0, 0]) + b"abcde")
        elif kind < 0.96:  # an unmasked client frame: a protocol error
            out.append(bytes([0x82, 3]) + b"abc")
        else:
            out.append(proto.close(1000, "bye"))
    return b"".join(bytes(f) for f in out)


def _events(server: WSConnection, chunks: list[bytes]) -> list[tuple]:
    seen = []
    for chunk in chunks:
        try:
            server.receive_data(chunk)
        except Exception as exc:  # noqa: BLE001 - compared between the two parsers
            seen.append(("raised", type(exc).__name__))
            break
        seen.extend((type(e).__name__, repr(e)) for e in server.events())
    return seen


@pytest.mark.parametrize("seed", range(60))
def test_fast_parser_yields_what_wsproto_yields(seed: int) -> None:
    rng = random.Random(seed)
    data = _stream(rng)
    cuts = sorted(rng.sample(range(1, len(data)), min(len(data) - 1, rng.randrange(0, 12))))
    chunks = [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]
    plain, fast = WSConnection(ConnectionType.SERVER), FastServerWS()
    _opened(plain)
    _opened(fast)
    expected = _events(plain, chunks)
    assert expected  # the stream yields something
    assert _events(fast, chunks) == expected


def test_common_frames_are_taken_without_wsproto() -> None:
    from collections import deque

    from relay.net.wsio import take_binary_frames

    proto = FrameProtocol(client=True, extensions=[])
    messages = [os.urandom(n) for n in (0, 100, 126, 1000)]
    data = b"".join(bytes(proto.send_data(m, True)) for m in messages)
    out: deque = deque()
    assert take_binary_frames(data, out) == len(data)
    assert [e.data for e in out] == messages
    assert take_binary_frames(data[:-1], deque()) == len(data) - 1008  # the last one (8-byte head) is cut
    ping = bytes(proto.ping(b"p"))
    assert take_binary_frames(data[:8] + ping, out) == 6  # the empty message; the ping is not ours
