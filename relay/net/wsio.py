"""The node's accepted WebSockets: trio-websocket with two additions the message path needs.

* **Answer before Close.** When the remote sends a Close, trio-websocket
  replies and closes the TCP stream at once, so requests read just before it
  (five ``send`` frames and a Close in one TCP write) could never be answered.
  :class:`GatedWebSocket` first awaits its ``close_gate`` (set by
  :class:`relay.net.accepted.AcceptedLink`), which returns once every message read
  before the Close has been answered and written (at most
  :data:`CLOSE_GATE_TIMEOUT` seconds), then closes as usual.
* **Reading without a task switch per message.**
  :meth:`GatedWebSocket.get_message_nowait` takes an already buffered message, and
  a :attr:`GatedWebSocket.message_hook` takes each complete message straight from
  trio-websocket's reader task while nothing is buffered (no memory-channel hop, no
  wake-up of another task); a message the hook declines (backpressure) and every
  one after it while any is buffered go through the channel as before, in order.
* **Parsing the common frame without wsproto's generators.** :class:`FastServerWS`
  (the server's ``WSConnection``) unmasks complete, unfragmented binary frames at a
  frame boundary itself and leaves everything else (control frames, text,
  fragments, partial or malformed frames, 64-bit lengths) to wsproto, which then
  sees the same bytes it would have at that boundary.
* **Several frames per write, without a yield when the socket takes them.**
  :meth:`GatedWebSocket.send_messages` frames a list of binary messages and writes
  them with one socket write (also while the close gate holds the Close reply
  back); on a plain TCP stream whose send buffer has room the write is a single
  non-blocking ``send`` under the stream lock, without a Trio checkpoint.
* **Writing from a callback.** :meth:`GatedWebSocket.send_nowait` frames and writes
  binary messages synchronously (e.g. from a commit's hand-back on the event loop,
  outside any task) when the stream is free; what the socket does not take is
  *owed*: every later write to the stream (:meth:`~GatedWebSocket.send_messages`,
  :meth:`~GatedWebSocket.flush_owed`, trio-websocket's own ``_send`` of a Pong or a
  Close) writes it first, under the stream lock, so a frame is never cut or
  interleaved.

:class:`GatedWebSocket` is a :class:`relay.net.wsclose.SafeWebSocket` (no Pong or
1009 Close that wsproto would refuse after our Close). Both reach into
trio-websocket's internals (``_handle_close_connection_event``, ``_wsproto``,
``_stream``, ``_stream_lock``, ``_recv_channel``, as of trio-websocket 0.12) and
mirror its own ``_send``;
:func:`relay.net.wsserver.serve_gated_websocket` serves connections of this class.
"""

from __future__ import annotations

import socket
from collections import deque
from collections.abc import Awaitable, Callable, Generator

import trio
from trio_websocket import ConnectionClosed
from wsproto import ConnectionType, WSConnection
from wsproto.connection import ConnectionState
from wsproto.events import BytesMessage, CloseConnection, Event, TextMessage

from .wsclose import SafeWebSocket

CLOSE_GATE_TIMEOUT = 5.0
"""Seconds a remote Close waits for the answers to the requests read before it."""

CloseGate = Callable[[Callable[[], int]], Awaitable[None]]
"""``await gate(buffered)``: return once everything read is answered; ``buffered()``
is how many received messages still wait in trio-websocket's queue."""


_FRAMING_STATES = (ConnectionState.OPEN, ConnectionState.REMOTE_CLOSING)


def unmask(payload: bytes | bytearray | memoryview, key: bytes | bytearray | memoryview) -> bytes:
    """``payload`` XOR the 4-byte masking ``key`` repeated (RFC 6455 5.3)."""
    n = len(payload)
    if not n:
        return b""
    mask = (bytes(key) * ((n + 3) // 4))[:n]
    return (int.from_bytes(payload, "little") ^ int.from_bytes(mask, "little")).to_bytes(n, "little")


def take_binary_frames(data: bytes | bytearray, out: deque[BytesMessage]) -> int:
    """Parse complete, final, masked binary frames (a client's, RFC 6455 5.2) from the
    start of ``data`` into ``out``; stop at the first other frame or at an incomplete
    one and return how many bytes were taken."""
    view = memoryview(data)
    end = len(data)
    i = 0
    while i + 6 <= end:
        b1 = data[i + 1]
        if data[i] != 0x82 or not b1 & 0x80:  # FIN + binary, masked: else wsproto's
            break
        n = b1 & 0x7F
        head = 2
        if n == 126:
            if i + 8 > end:
                break
            n = int.from_bytes(view[i + 2:i + 4], "big")
            if n < 126:  # not the minimal encoding: wsproto refuses it
                break
            head = 4
        elif n == 127:
            break
        start = i + head + 4
        if start + n > end:
            break
        out.append(BytesMessage(data=unmask(view[start:start + n], view[i + head:start]),
                                frame_finished=True, message_finished=True))
        i = start + n
    return i


class FastServerWS(WSConnection):
    """The server side of wsproto with the common frame parsed here (see the module
    docstring): same events, in the same order."""

    def __init__(self) -> None:
        super().__init__(ConnectionType.SERVER)
        self._parsed: deque[BytesMessage] = deque()

    def receive_data(self, data: bytes | None) -> None:
        conn = self.connection
        if data and conn is not None and conn.state is ConnectionState.OPEN:
            proto = conn._proto
            decoder = proto._frame_decoder
            if (not conn._events and decoder.header is None and not len(decoder.buffer)
                    and proto._message_decoder.opcode is None and not proto.extensions):
                taken = take_binary_frames(data, self._parsed)
                if taken == len(data):
                    return
                data = data[taken:]
        super().receive_data(data)

    def events(self) -> Generator[Event, None, None]:
        parsed = self._parsed
        while parsed:
            yield parsed.popleft()
        yield from super().events()


def frame_binary(messages: list[bytes]) -> bytes:
    """Unmasked, unfragmented binary WebSocket frames (RFC 6455 5.2, as a server
    sends them, no extension) of ``messages``, concatenated."""
    parts: list[bytes] = []
    for m in messages:
        n = len(m)
        if n < 126:
            parts.append(bytes((0x82, n)))
        elif n < 65536:
            parts.append(b"\x82\x7e" + n.to_bytes(2, "big"))
        else:
            parts.append(b"\x82\x7f" + n.to_bytes(8, "big"))
        parts.append(m)
    return b"".join(parts)


class GatedWebSocket(SafeWebSocket):
    """A server-side :class:`~relay.net.wsclose.SafeWebSocket` whose reply to a
    remote Close waits for :attr:`close_gate` (see the module docstring).

    Attributes:
        close_gate: see :data:`CloseGate`.
        message_hook: ``hook(message) -> bool`` called from the reader task with each
            complete message while none is buffered; ``True``: taken (it must not
            block), ``False``: buffered for ``get_message`` instead.
    """

    close_gate: CloseGate | None = None
    message_hook: Callable[[bytes | str], bool] | None = None
    _owed: bytes | memoryview = b""  # the tail of a send_nowait the socket did not take

    async def _handle_message_event(self, event: BytesMessage | TextMessage) -> None:
        hook = self.message_hook
        if (hook is None or not event.message_finished or self._message_parts
                or len(event.data) > self._max_message_size
                or self._recv_channel._state.data):  # buffered (statistics() costs more)
            await super()._handle_message_event(event)
            return
        data = event.data
        message = data if isinstance(data, str | bytes) else bytes(data)
        if not hook(message):
            await super()._handle_message_event(event)

    def buffered(self) -> int:
        """Received messages not yet taken with ``get_message``."""
        return self._recv_channel.statistics().current_buffer_used

    def get_message_nowait(self) -> bytes | str | None:
        """The next received message if one is already buffered, else ``None``
        (without yielding to the scheduler, unlike ``get_message``)."""
        try:
            return self._recv_channel.receive_nowait()
        except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
            return None

    async def _handle_close_connection_event(self, event: CloseConnection) -> None:
        gate = self.close_gate
        if gate is not None and self._wsproto.state == ConnectionState.REMOTE_CLOSING:
            with trio.move_on_after(CLOSE_GATE_TIMEOUT):
                await gate(self.buffered)
        await super()._handle_close_connection_event(event)

    async def send_messages(self, messages: list[bytes]) -> None:
        """Send binary messages, in order, with one write to the stream.

        Raises:
            ConnectionClosed: the connection is closed or closing (like ``send_message``).
        """
        if self._close_reason:
            raise ConnectionClosed(self._close_reason)
        state = self._wsproto.state
        conn = self._wsproto.connection
        proto = conn._proto if conn is not None else None
        if (state in _FRAMING_STATES and proto is not None and not proto.client
                and not proto.extensions and proto._outbound_opcode is None):
            # What wsproto would write, framed here (its framing copies each payload):
            # also inside the close gate, where wsproto refuses messages once it parsed
            # the remote's Close, but RFC 6455 (5.5.1) lets us finish what we owe
            # before our Close reply.
            data = frame_binary(messages)
        elif state == ConnectionState.REMOTE_CLOSING and proto is not None:
            data = b"".join(proto.send_data(m, True) for m in messages)
        else:
            data = b"".join([self._wsproto.send(BytesMessage(data=m)) for m in messages])
        sock = self._plain_socket()
        if sock is not None and not self._stream_lock.locked():
            self._stream_lock.acquire_nowait()  # held across the awaits below, if any
            try:
                if self._owed:
                    data = bytes(self._owed) + data
                    self._owed = b""
                try:
                    sent = sock.send(data)
                except BlockingIOError:
                    sent = 0
                except OSError:
                    sent = -1
                if sent == len(data):
                    return
                if sent >= 0:
                    await self._send_rest(memoryview(data)[sent:])
                    return
            finally:
                self._stream_lock.release()
        async with self._stream_lock:
            if self._owed:
                data = bytes(self._owed) + data
                self._owed = b""
            await self._send_rest(data)

    def send_nowait(self, messages: list[bytes]) -> int | None:
        """Frame binary ``messages`` and write them now, without yielding (callable
        outside a task, e.g. from a ``run_sync_soon`` callback).

        Returns:
            ``None``: nothing was written (no plain TCP stream, the stream is being
            written, a tail is still owed, the connection is not open, or the socket
            takes nothing now); else how many bytes the socket did not take (0: all
            written). Those bytes are owed: the next write to the stream writes them
            first; :meth:`flush_owed` writes them alone.
        """
        if self._close_reason or self._owed or self._stream_lock.locked():
            return None
        conn = self._wsproto.connection
        proto = conn._proto if conn is not None else None
        if (self._wsproto.state is not ConnectionState.OPEN or proto is None or proto.client
                or proto.extensions or proto._outbound_opcode is not None):
            return None
        sock = self._plain_socket()
        if sock is None:
            return None
        data = frame_binary(messages)
        try:
            sent = sock.send(data)
        except OSError:  # nothing taken (full, or broken: the next write finds out)
            return None
        if sent < len(data):
            self._owed = memoryview(data)[sent:]
        return len(data) - sent

    async def flush_owed(self) -> None:
        """Write what :meth:`send_nowait` left owed, if anything (under the stream lock).

        Raises:
            ConnectionClosed: the stream broke.
        """
        async with self._stream_lock:
            if self._owed:
                data, self._owed = self._owed, b""
                await self._send_rest(data)

    async def _send(self, event: Event) -> None:
        # trio-websocket's own writes (Pong, Close, ...): an owed tail goes first. No
        # yield lies between flush_owed's release and the base's acquire of the lock,
        # and a send_nowait never writes while the lock is held or awaited.
        if self._owed:
            await self.flush_owed()
        await super()._send(event)

    async def _send_rest(self, data: bytes | memoryview) -> None:
        try:
            await self._stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            await self._abort_web_socket()
            raise ConnectionClosed(self._close_reason) from None

    def _plain_socket(self) -> socket.socket | None:
        """The non-blocking OS socket under a plain TCP stream (``None`` under TLS)."""
        stream = self._stream
        if type(stream) is not trio.SocketStream:
            return None
        return stream.socket._sock  # type: ignore[attr-defined]


__all__ = ["CLOSE_GATE_TIMEOUT", "CloseGate", "FastServerWS", "GatedWebSocket", "frame_binary",
           "take_binary_frames", "unmask"]
