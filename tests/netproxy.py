"""A tiny TCP proxy on 127.0.0.1 for link faults: ``pass`` forwards both ways;
``blackhole`` stops forwarding without closing anything, like a NAT that forgot the
flow or a dead Wi-Fi (new connections are accepted and get nothing either). Data read
while black-holed is held and forwarded after :meth:`Proxy.heal`, as TCP would
retransmit it.

:meth:`Proxy.blackhole_at` black-holes at a chosen moment instead: right after the
first client WebSocket message that a predicate picks (e.g. the ``send`` frame) was
forwarded, so that the node gets it and its answer is lost. Client frames are masked
(RFC 6455, 5.3); the proxy unmasks a copy to look at them.

Usage::

    async with trio.open_nursery() as nursery:
        proxy = Proxy(node_port)
        await nursery.start(proxy.serve)
        url = proxy.url                     # ws://127.0.0.1:PORT
        proxy.blackhole(); ...; proxy.heal()
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import msgpack
import trio

__all__ = ["Proxy", "frame_type"]


def frame_type(payload: bytes) -> str | None:
    """The ``t`` of a msgpack frame, or ``None``."""
    try:
        obj = msgpack.unpackb(payload, raw=False)
    except (ValueError, msgpack.UnpackException):
        return None
    return obj.get("t") if isinstance(obj, dict) else None


class _ClientFrames:
    """Parses the client -> server byte stream of one WebSocket: the HTTP upgrade, then
    masked frames; :meth:`feed` returns the unmasked payloads completed by ``data``."""

    def __init__(self) -> None:
        self._buf = b""
        self._upgraded = False

    def feed(self, data: bytes) -> list[bytes]:
        self._buf += data
        if not self._upgraded:
            end = self._buf.find(b"\r\n\r\n")
            if end < 0:
                return []
            self._buf, self._upgraded = self._buf[end + 4:], True
        out = []
        while len(self._buf) >= 2:
            size, at = self._buf[1] & 0x7F, 2
            if size == 126:
                size, at = int.from_bytes(self._buf[2:4], "big"), 4
            elif size == 127:
                size, at = int.from_bytes(self._buf[2:10], "big"), 10
            masked = self._buf[1] & 0x80
            end = at + (4 if masked else 0) + size
            if len(self._buf) < end:
                break
            mask = self._buf[at:at + 4] if masked else b"\0\0\0\0"
            body = self._buf[end - size:end]
            out.append(bytes(b ^ mask[i % 4] for i, b in enumerate(body)))
            self._buf = self._buf[end:]
        return out


class Proxy:
    """Forwards ``127.0.0.1:port`` (``port`` if given, else chosen at :meth:`serve`)
    to ``127.0.0.1:target``.

    Attributes:
        port: the listening port (after :meth:`serve` started).
        connections: connections accepted so far.
        blackholed_at: ``trio.current_time()`` when the last black-hole began.
        holding: set when a black-hole begins (a new event after each :meth:`heal`).
    """

    def __init__(self, target: int, port: int = 0) -> None:
        self.target = target
        self.port = port
        self.connections = 0
        self._open = trio.Event()
        self._open.set()
        self._trigger: Callable[[bytes], bool] | None = None
        self.blackholed_at: float | None = None
        self.holding = trio.Event()

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def blackhole(self) -> None:
        """Stop forwarding, both ways, on every connection (open and new)."""
        if self._open.is_set():
            self._open = trio.Event()
            self.blackholed_at = trio.current_time()
            self.holding.set()

    def heal(self) -> None:
        """Forward again (what was held back goes through)."""
        self._trigger = None
        self._open.set()
        if self.holding.is_set():
            self.holding = trio.Event()

    def blackhole_at(self, predicate: Callable[[bytes], bool]) -> None:
        """Black-hole (as :meth:`blackhole`) right after forwarding the first client
        message whose unmasked payload satisfies ``predicate``."""
        self._trigger = predicate

    async def serve(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Listen until cancelled (``nursery.start`` it)."""
        listeners = await trio.open_tcp_listeners(self.port, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started()
        await trio.serve_listeners(self._handle, listeners)

    async def _gate(self) -> None:
        while not self._open.is_set():
            await self._open.wait()

    async def _handle(self, client: trio.SocketStream) -> None:
        self.connections += 1
        async with client:
            try:
                upstream = await trio.open_tcp_stream("127.0.0.1", self.target)
            except OSError:
                return
            async with upstream, trio.open_nursery() as nursery:
                done = partial(nursery.cancel_scope.cancel)
                nursery.start_soon(self._pump, client, upstream, _ClientFrames(), done)
                nursery.start_soon(self._pump, upstream, client, None, done)

    async def _pump(self, src: trio.SocketStream, dst: trio.SocketStream,
                    frames: _ClientFrames | None, done: Callable[[], None]) -> None:
        try:
            while True:
                await self._gate()
                data = await src.receive_some(65536)
                await self._gate()  # read before a black-hole began: held until heal
                if not data:
                    break
                await dst.send_all(data)
                payloads = frames.feed(data) if frames is not None else []
                trigger = self._trigger
                if trigger is not None and any(trigger(p) for p in payloads):
                    self._trigger = None
                    self.blackhole()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        done()
