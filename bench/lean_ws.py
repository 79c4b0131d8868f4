"""A minimal client WebSocket (RFC 6455) over a Trio stream, for the relay load
generator only (:mod:`bench.relay_wire`).

The generator measures the relay; the less CPU it spends itself, the less it takes
from the node it measures on a shared machine and the sooner it reads what the node
wrote. trio-websocket runs a reader task per connection and hands every message
through a memory channel, and wsproto parses every frame in Python objects; here the
task that wants a message reads the socket itself and the node's frames (unmasked,
final binary frames: :func:`relay.net.wsio.frame_binary`) are cut out of the buffer
with a few slices. Pings are answered, a Close ends the connection; anything else
(text, fragments, reserved bits) is refused, since the node never sends it.

Not a general client: plain ``ws://`` only, no extensions, no subprotocols.
:class:`LeanWebSocket` has the two calls the generator uses, ``send_message`` and
``get_message``, with trio-websocket's meaning.
"""

from __future__ import annotations

import base64
import hashlib
import os
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from urllib.parse import urlsplit

import trio

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # RFC 6455, section 1.3
_OP_CONT, _OP_TEXT, _OP_BINARY, _OP_CLOSE, _OP_PING, _OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
_MAX_HEADER = 16 * 1024  # bytes of HTTP response head accepted


class LeanClosed(ConnectionError):
    """The connection ended (a Close from the node, or the socket closed)."""


def mask_frame(opcode: int, payload: bytes) -> bytes:
    """One final client frame (RFC 6455 5.2) of ``payload``, masked with a fresh
    random key (5.3), as a client must."""
    n = len(payload)
    if n < 126:
        head = bytes((0x80 | opcode, 0x80 | n))
    elif n < 1 << 16:
        head = bytes((0x80 | opcode, 0x80 | 126)) + n.to_bytes(2, "big")
    else:
        head = bytes((0x80 | opcode, 0x80 | 127)) + n.to_bytes(8, "big")
    key = os.urandom(4)
    if not n:
        return head + key
    stream = (key * (n // 4 + 1))[:n]
    masked = (int.from_bytes(payload, "little") ^ int.from_bytes(stream, "little")).to_bytes(
        n, "little")
    return head + key + masked


class LeanWebSocket:
    """An open client WebSocket over ``stream`` (after the opening handshake).

    ``send_message`` may be called from several tasks (a lock keeps frames whole);
    ``get_message`` from one task at a time.
    """

    def __init__(self, stream: trio.abc.Stream, rest: bytes, max_message: int) -> None:
        self._stream = stream
        self._buf = bytearray(rest)
        self._messages: deque[bytes] = deque()
        self._send_lock = trio.Lock()
        self._max = max_message
        self._closed = False

    async def send_message(self, data: bytes) -> None:
        """Send ``data`` as one binary message.

        Raises:
            LeanClosed: the connection has ended.
        """
        await self._send(mask_frame(_OP_BINARY, data))

    async def _send(self, frame: bytes) -> None:
        if self._closed:
            raise LeanClosed("the connection is closed")
        if type(self._stream) is trio.SocketStream and not self._send_lock.locked():
            self._send_lock.acquire_nowait()  # held until the frame is whole on the socket
            try:  # one system call, as the node writes (relay.net.wsio), no Trio wrapper
                try:
                    sent = self._stream.socket._sock.send(frame)  # type: ignore[attr-defined]
                except BlockingIOError:
                    sent = 0
                except OSError as exc:
                    self._closed = True
                    raise LeanClosed(str(exc)) from exc
                if sent < len(frame):
                    await self._send_all(memoryview(frame)[sent:])
                else:
                    await trio.lowlevel.checkpoint()
            finally:
                self._send_lock.release()
            return
        async with self._send_lock:
            await self._send_all(frame)

    async def _send_all(self, data: bytes | memoryview) -> None:
        try:
            await self._stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            self._closed = True
            raise LeanClosed(str(exc)) from exc

    async def get_message(self) -> bytes:
        """The next binary message from the node.

        Raises:
            LeanClosed: the node closed the connection (or the socket ended).
            ValueError: a frame the node never sends (text, fragmented, too large).
        """
        while not self._messages:
            if self._closed:
                raise LeanClosed("the connection is closed")
            await self._parse()
            if self._messages:
                break
            try:
                data = await self._stream.receive_some(65536)
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                self._closed = True
                raise LeanClosed(str(exc)) from exc
            if not data:
                self._closed = True
                raise LeanClosed("the node closed the socket")
            self._buf += data
        return self._messages.popleft()

    async def _parse(self) -> None:
        buf = self._buf
        i, end = 0, len(buf)
        try:
            while i + 2 <= end:
                b0, b1 = buf[i], buf[i + 1]
                if b1 & 0x80 or b0 & 0x70 or not b0 & 0x80:
                    raise ValueError("masked, reserved-bit or fragmented frame from the node")
                n, head = b1 & 0x7F, 2
                if n == 126:
                    if i + 4 > end:
                        break
                    n, head = int.from_bytes(buf[i + 2:i + 4], "big"), 4
                elif n == 127:
                    if i + 10 > end:
                        break
                    n, head = int.from_bytes(buf[i + 2:i + 10], "big"), 10
                if n > self._max:
                    raise ValueError(f"a {n}-byte message from the node")
                if i + head + n > end:
                    break
                payload = bytes(buf[i + head:i + head + n])
                i += head + n
                opcode = b0 & 0x0F
                if opcode == _OP_BINARY:
                    self._messages.append(payload)
                elif opcode == _OP_PING:
                    await self._send(mask_frame(_OP_PONG, payload))
                elif opcode == _OP_CLOSE:
                    self._closed = True
                    break
                elif opcode != _OP_PONG:
                    raise ValueError(f"opcode {opcode} from the node")
        finally:
            del buf[:i]

    async def aclose(self) -> None:
        """Send a Close (1000) if still open, then close the socket."""
        if not self._closed:
            try:
                await self._send(mask_frame(_OP_CLOSE, (1000).to_bytes(2, "big")))
            except LeanClosed:
                pass
        self._closed = True
        await self._stream.aclose()


@asynccontextmanager
async def open_lean_websocket(url: str, max_message: int) -> AsyncIterator[LeanWebSocket]:
    """Connect to a ``ws://`` ``url`` and run the opening handshake (RFC 6455 4.1).

    Raises:
        OSError: the connection failed.
        ValueError: not a ``ws://`` URL, or the node refused the upgrade.
    """
    parts = urlsplit(url)
    if parts.scheme != "ws" or parts.hostname is None:
        raise ValueError(f"lean WebSocket: only ws:// URLs ({url!r})")
    port = parts.port or 80
    stream = await trio.open_tcp_stream(parts.hostname, port)
    opened = False
    try:
        key = base64.b64encode(os.urandom(16))
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        await stream.send_all(
            f"GET {target} HTTP/1.1\r\nHost: {parts.hostname}:{port}\r\n"
            "Upgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key.decode()}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode())
        data = b""
        while b"\r\n\r\n" not in data:
            more = await stream.receive_some(4096)
            if not more or len(data) > _MAX_HEADER:
                raise ValueError("the node closed during the WebSocket handshake")
            data += more
        head, rest = data.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        if lines[0].split(" ")[1:2] != ["101"]:
            raise ValueError(f"WebSocket upgrade refused: {lines[0]!r}")
        headers = {k.strip().lower(): v.strip()
                   for k, _, v in (line.partition(":") for line in lines[1:])}
        accept = base64.b64encode(hashlib.sha1(key + _GUID).digest()).decode()
        if headers.get("sec-websocket-accept") != accept:
            raise ValueError("WebSocket upgrade: wrong Sec-WebSocket-Accept")
        opened = True
    finally:
        if not opened:
            with trio.CancelScope(shield=True):
                await stream.aclose()
    ws = LeanWebSocket(stream, rest, max_message)
    try:
        yield ws
    finally:
        with trio.CancelScope(shield=True):
            await ws.aclose()
