"""Accepting connections: admission (:mod:`relay.admission`), then a
:class:`~relay.server.Connection` per admitted WebSocket.

Beyond the node's ``max_connections``, or ``max_pending_per_ip``
unauthenticated connections from one address, a new connection is refused with
HTTP 503 (``Retry-After: 5``) at the WebSocket handshake, before any frame; the
node logs at most one warning per :data:`~relay.admission.REFUSAL_LOG_INTERVAL`
seconds about refusals.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import trio
from trio_websocket import ConnectionClosed, Endpoint, WebSocketRequest

from relay.admission import REFUSAL_LOG_INTERVAL, Refused
from relay.server import CLOSE_TIMEOUT, Connection

if TYPE_CHECKING:
    from relay.node import Node


async def handle_websocket(node: Node, request: WebSocketRequest) -> None:
    """trio-websocket handler: admit, accept and serve one connection on ``node``,
    or refuse it with HTTP 503. Never raises (except Cancelled)."""
    endpoint = request.remote
    if isinstance(endpoint, Endpoint):
        address, remote = str(endpoint.address), f"{endpoint.address}:{endpoint.port}"
    else:
        address = remote = str(endpoint)
    try:
        ticket = node.admission.admit(address)
    except Refused as exc:
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
        await Connection(node, ws, remote, ticket).run()
