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


def _hostile(rng: random.Random) -> bytes:
    """Client frames that a hostile client writes, among valid binary ones: RSV bits,
    reserved opcodes, 64-bit lengths (minimal or not, top bit set), control frames
    too long or fragmented, continuation without a start, close frames with bad codes
    or bad UTF-8, zero-length frames, a 16-bit length frame split from its mask."""
    proto = FrameProtocol(client=True, extensions=[])
    key = os.urandom(4)
    out: list[bytes] = []
    for _ in range(rng.randrange(1, 30)):
        kind = rng.randrange(12)
        if kind < 3:
            out.append(bytes(proto.send_data(os.urandom(rng.choice([0, 1, 126, 4000])), True)))
        elif kind == 3:
            out.append(bytes([0x80 | rng.randrange(1, 8) << 4 | 2, 0x83]) + key + b"abc")
        elif kind == 4:
            out.append(bytes([0x80 | rng.choice([3, 7, 11, 15]), 0x81]) + key + b"x")
        elif kind == 5:
            n = rng.choice([3, 200, 70000, 1 << 63])
            body = b"y" * min(n, 70000)
            out.append(bytes([0x82, 0xFF]) + n.to_bytes(8, "big") + key + body)
        elif kind == 6:
            out.append(bytes([0x89, 0x80 | 126, 0, 126]) + key + b"p" * 126)
        elif kind == 7:
            out.append(bytes([0x09, 0x81]) + key + b"p")  # a fragmented ping
        elif kind == 8:
            out.append(bytes([0x80, 0x83]) + key + b"cnt")  # continuation, nothing started
        elif kind == 9:
            code = rng.choice([0, 999, 1004, 1005, 1006, 1015, 2999, 5000])
            out.append(bytes([0x88, 0x82]) + key + bytes(
                b ^ key[i % 4] for i, b in enumerate(code.to_bytes(2, "big"))))
        elif kind == 10:
            body = (1000).to_bytes(2, "big") + b"\xff\xfe"
            out.append(bytes([0x88, 0x80 | len(body)]) + key + bytes(
                b ^ key[i % 4] for i, b in enumerate(body)))
        else:
            out.append(bytes(proto.send_data(b"frag", False)) + bytes(proto.ping(b"in between"))
                       + bytes(proto.send_data(b"ment", True)))
    return b"".join(out)


@pytest.mark.parametrize("seed", range(80))
def test_fast_parser_yields_what_wsproto_yields_on_hostile_frames(seed: int) -> None:
    """Whatever a hostile client writes, in whatever pieces (byte by byte too), the
    fast parser's events are wsproto's: no frame is taken for another."""
    rng = random.Random(1000 + seed)
    data = _hostile(rng)
    if seed % 8 == 0:
        cuts = list(range(1, min(len(data), 400)))  # the first bytes one at a time
    else:
        cuts = sorted(rng.sample(range(1, len(data)), min(len(data) - 1, rng.randrange(0, 20))))
    chunks = [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]
    plain, fast = WSConnection(ConnectionType.SERVER), FastServerWS()
    _opened(plain)
    _opened(fast)
    assert _events(fast, chunks) == _events(plain, chunks)
