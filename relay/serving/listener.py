"""Accepting connections: admission (:mod:`relay.net.admission`), then a
:class:`~relay.serving.server.Connection` per admitted WebSocket.

Beyond the node's ``max_connections``, or ``max_pending_per_ip``
unauthenticated connections from one address, a new connection is refused with
HTTP 503 (``Retry-After: 5``) at the WebSocket handshake, before any frame; the
node logs at most one warning per :data:`~relay.net.admission.REFUSAL_LOG_INTERVAL`
seconds about refusals. While the node stops (:meth:`relay.node.Node.shut_down`)
every new connection is refused the same way.

Each accepted WebSocket is counted in the node's metrics (messages and bytes in
and out, counted by the connection's reader and writer) and kept in
:attr:`relay.node.Node.sockets` while it is served, so that stopping can close
it with 1001 (going away).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import trio
from trio_websocket import ConnectionClosed, Endpoint, WebSocketRequest

from relay.net.admission import REFUSAL_LOG_INTERVAL, Refused
from relay.serving.server import CLOSE_TIMEOUT, Connection

if TYPE_CHECKING:
    from relay.node import Node


class SocketSet:
    """The accepted WebSockets being served (a set; iterate over a copy)."""

    def __init__(self) -> None:
        self._items: set = set()
        self._empty = trio.Event()
        self._empty.set()

    def add(self, ws: object) -> None:
        """``ws`` is being served."""
        self._items.add(ws)
        if self._empty.is_set():
            self._empty = trio.Event()

    def discard(self, ws: object) -> None:
        """``ws``'s handler is done (no-op if unknown)."""
        self._items.discard(ws)
        if not self._items:
            self._empty.set()

    def __len__(self) -> int:
        return len(self._items)

    def snapshot(self) -> list:
        """The sockets now, as a list."""
        return list(self._items)

    async def wait_empty(self) -> None:
        """Return once no socket is being served."""
        await self._empty.wait()


async def handle_websocket(node: Node, request: WebSocketRequest) -> None:
    """trio-websocket handler: admit, accept and serve one connection on ``node``,
    or refuse it with HTTP 503. Never raises (except Cancelled)."""
    endpoint = request.remote
    if isinstance(endpoint, Endpoint):
        address, remote = str(endpoint.address), f"{endpoint.address}:{endpoint.port}"
    else:
        address = remote = str(endpoint)
    try:
        if node.stopping.is_set():
            raise Refused("the node is stopping")
        ticket = node.admission.admit(address)
    except Refused as exc:
        node.metrics.refused.inc()
        count = node.admission.note_refusal(trio.current_time())
        if count:
            node.log.warning("refused %d connection(s) in the last %g s, e.g. from %s: %s",
                             count, REFUSAL_LOG_INTERVAL, remote, exc.reason)
        with trio.move_on_after(CLOSE_TIMEOUT):
            try:
                await request.reject(503, extra_headers=[(b"Retry-After", b"5")],
                                     body=f"{exc.reason}; retry later\n".encode())
            except ConnectionClosed:
                pass
        return
    with ticket:
        try:
            ws = await request.accept()
        except ConnectionClosed:
            return
        node.metrics.accepted.inc()
        node.sockets.add(ws)
        try:
            await Connection(node, ws, remote, ticket).run()
        finally:
            node.sockets.discard(ws)
