"""Raw WebSocket bytes for attack tests: a client's upgrade request, masked client
frames, the node's (unmasked) frames parsed back, and sockets that end with an RST.
Only what a hostile client writes by hand; honest clients use :mod:`relay_harness`."""

from __future__ import annotations

import socket
import ssl
import struct

import trio

KEY = b"dGhlIHNhbXBsZSBub25jZQ=="
REQUEST = (b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
           b"Connection: Upgrade\r\nSec-WebSocket-Key: " + KEY + b"\r\n"
           b"Sec-WebSocket-Version: 13\r\n\r\n")
TEXT, BINARY, CLOSE, PING = 1, 2, 8, 9


def client_frame(opcode: int, payload: bytes, *, length: int | None = None) -> bytes:
    """One final client frame (RFC 6455 5.2) masked with a zero key (so the payload
    goes as is); ``length`` announces another payload length than ``len(payload)``."""
    n = len(payload) if length is None else length
    if n < 126:
        head = bytes((0x80 | opcode, 0x80 | n))
    elif n < 65536:
        head = bytes((0x80 | opcode, 0x80 | 126)) + n.to_bytes(2, "big")
    else:
        head = bytes((0x80 | opcode, 0x80 | 127)) + n.to_bytes(8, "big")
    return head + b"\0\0\0\0" + payload


def port_of(url: str) -> int:
    """The port of a ``ws://`` or ``wss://`` URL."""
    return int(url.rsplit(":", 1)[1])


async def open_raw(port: int, tls: bool) -> trio.abc.Stream:
    """A TCP (or TLS, certificate unchecked) stream to 127.0.0.1:``port``."""
    stream: trio.abc.Stream = await trio.open_tcp_stream("127.0.0.1", port)
    if tls:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        stream = trio.SSLStream(stream, ctx, server_hostname="relay", https_compatible=True)
    return stream


async def read_response(stream: trio.abc.Stream) -> tuple[bytes, bytes]:
    """The HTTP response head (up to the blank line) and the bytes read after it.

    Raises:
        AssertionError: the stream ended first."""
    data = b""
    while b"\r\n\r\n" not in data:
        more = await stream.receive_some(65536)
        assert more, f"the node closed before answering: {data!r}"
        data += more
    head, _, rest = data.partition(b"\r\n\r\n")
    return head, rest


async def upgraded(port: int, tls: bool) -> tuple[trio.abc.Stream, bytes]:
    """A stream whose upgrade the node accepted (101), and bytes read after the answer."""
    stream = await open_raw(port, tls)
    await stream.send_all(REQUEST)
    head, rest = await read_response(stream)
    assert head.startswith(b"HTTP/1.1 101 "), head
    return stream, rest


async def read_until_close(stream: trio.abc.Stream, data: bytes = b"") -> list[tuple[int, bytes]]:
    """The node's frames ``(opcode, payload)`` up to and with its Close frame.

    Raises:
        AssertionError: the stream ended before a Close frame."""
    frames: list[tuple[int, bytes]] = []
    while True:
        while len(data) >= 2:
            n, at = data[1] & 0x7F, 2
            if n == 126:
                n, at = int.from_bytes(data[2:4], "big"), 4
            elif n == 127:
                n, at = int.from_bytes(data[2:10], "big"), 10
            if len(data) < at + n:
                break
            frames.append((data[0] & 0x0F, data[at:at + n]))
            data = data[at + n:]
            if frames[-1][0] == CLOSE:
                return frames
        more = await stream.receive_some(65536)
        assert more, f"no Close frame from the node: {frames!r}"
        data += more


async def wait_ended(stream: trio.abc.Stream) -> None:
    """Return once the node ended the connection (EOF or reset), reading what comes."""
    try:
        while await stream.receive_some(65536):
            pass
    except trio.BrokenResourceError:
        pass


def reset(stream: trio.abc.Stream) -> None:
    """Close the TCP connection under ``stream`` with an RST (SO_LINGER 0)."""
    inner = getattr(stream, "transport_stream", stream)
    sock = inner.socket  # type: ignore[attr-defined]
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()
