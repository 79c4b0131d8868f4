"""A hostile relay on the path for attack tests: a WebSocket server on 127.0.0.1 that
relays every message between ``wa-cli`` and a real node (plain ``ws://`` has no
channel binding, so the node's signed challenge passes through and the client accepts
the connection), and lets the test rewrite, drop or inject the node's frames.

``to_client(frame, raw)`` is called with each node -> client message (``frame``: the
decoded msgpack map, ``None`` if it is not one; ``raw``: the bytes) and returns the list
of byte strings to hand to the client instead (``[raw]`` passes it, ``[]`` drops it).
``to_node`` likewise for client -> node messages. :meth:`Mitm.inject` writes bytes to
every open client connection; :meth:`Mitm.close_clients` closes them with a code.

Usage::

    async with trio.open_nursery() as nursery:
        mitm = Mitm(node_url)
        await nursery.start(mitm.serve)
        mitm.url                                  # ws://127.0.0.1:PORT
        mitm.to_client = lambda frame, raw: [raw]
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgpack
import trio
from trio_websocket import (
    ConnectionClosed,
    WebSocketConnection,
    WebSocketRequest,
    open_websocket_url,
    serve_websocket,
)

__all__ = ["Mitm", "decode", "encode"]

BIG = 64 * 1024 * 1024

Rewrite = Callable[[dict[str, Any] | None, bytes], list[bytes]]


def decode(raw: bytes) -> dict[str, Any] | None:
    """The msgpack map in ``raw``, or ``None``."""
    try:
        obj = msgpack.unpackb(raw, raw=False, strict_map_key=False)
    except (ValueError, msgpack.UnpackException):
        return None
    return obj if isinstance(obj, dict) else None


def encode(frame: dict[str, Any]) -> bytes:
    """``frame`` as a msgpack message."""
    return msgpack.packb(frame, use_bin_type=True)


def _passthrough(frame: dict[str, Any] | None, raw: bytes) -> list[bytes]:
    return [raw]


class Mitm:
    """The relaying server; see the module docstring."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.url = ""
        self.to_client: Rewrite = _passthrough
        self.to_node: Rewrite = _passthrough
        self.clients: list[WebSocketConnection] = []
        self.seen_from_client: list[dict[str, Any] | None] = []
        self._new_frame = trio.Event()

    async def serve(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Serve on an ephemeral port until cancelled; :attr:`url` is set before started."""
        async with trio.open_nursery() as nursery:
            server = await nursery.start(lambda task_status: serve_websocket(
                self._handle, "127.0.0.1", 0, ssl_context=None, max_message_size=BIG,
                task_status=task_status))
            self.url = f"ws://127.0.0.1:{server.port}"
            task_status.started()

    async def wait_for(self, frame_type: str) -> None:
        """Return once a client sent a frame of ``frame_type`` (``"sync"``, ...)."""
        while not any(f and f.get("t") == frame_type for f in self.seen_from_client):
            await self._new_frame.wait()

    async def inject(self, raw: bytes) -> None:
        """Write ``raw`` as one message to every open client connection."""
        for ws in list(self.clients):
            try:
                await ws.send_message(raw)
            except ConnectionClosed:
                pass

    async def close_clients(self, code: int = 1000, reason: str | None = None) -> None:
        """Close every open client connection with ``code``."""
        for ws in list(self.clients):
            await ws.aclose(code, reason)

    async def _handle(self, request: WebSocketRequest) -> None:
        client = await request.accept()
        self.clients.append(client)
        try:
            async with open_websocket_url(self.upstream, max_message_size=BIG) as node:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._pump, client, node, "to_node", nursery)
                    nursery.start_soon(self._pump, node, client, "to_client", nursery)
        except (ConnectionClosed, OSError, trio.BrokenResourceError):
            pass
        finally:
            self.clients.remove(client)
            with trio.CancelScope(shield=True), trio.move_on_after(2):
                await client.aclose()

    async def _pump(self, src: WebSocketConnection, dst: WebSocketConnection, way: str,
                    nursery: trio.Nursery) -> None:
        try:
            while True:
                raw = await src.get_message()
                frame = decode(raw)
                if way == "to_node":
                    self.seen_from_client.append(frame)
                    self._new_frame.set()
                    self._new_frame = trio.Event()
                for out in getattr(self, way)(frame, raw):
                    await dst.send_message(out)
        except ConnectionClosed:
            pass
        nursery.cancel_scope.cancel()
