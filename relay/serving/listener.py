"""The node's WebSocket handler: :func:`relay.net.listener.accept_websocket` with the
node's admission, counters and socket set, each accepted WebSocket served as an
:class:`~relay.net.accepted.AcceptedLink` dispatched to the node's services
(:class:`~relay.serving.server.Connection`).

Each accepted WebSocket is counted in the node's metrics (messages and bytes in
and out, counted by the link's reader and writer) and kept in
:attr:`relay.node.Node.sockets` while it is served, so that stopping can close
it with 1001 (going away).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from relay.net.accepted import AcceptedLink, AcceptSettings
from relay.net.admission import Ticket
from relay.net.listener import SocketSet, accept_websocket
from relay.protocol.connection import ServerConnection
from relay.serving.server import Connection

if TYPE_CHECKING:
    from trio_websocket import WebSocketConnection, WebSocketRequest

    from relay.node import Node

__all__ = ["SocketSet", "handle_websocket"]


def accept_settings(node: Node) -> AcceptSettings:
    """The node's :class:`AcceptSettings` (handshake deadline, keepalive) from its config."""
    config = node.config
    return AcceptSettings(handshake_timeout=config.handshake_timeout,
                          keepalive_interval=config.keepalive_interval,
                          keepalive_timeout=config.keepalive_timeout)


async def handle_websocket(node: Node, request: WebSocketRequest) -> None:
    """trio-websocket handler: admit, accept and serve one connection on ``node``,
    or refuse it with HTTP 503. Never raises (except Cancelled)."""

    async def serve(ws: WebSocketConnection, remote: str, ticket: Ticket) -> None:
        link = AcceptedLink(ws, remote, ServerConnection(node.limits), accept_settings(node),
                            ticket=ticket, log=node.log, metrics=node.metrics)
        link.attach(Connection(node, link))
        await link.run()

    await accept_websocket(request, serve, admission=node.admission, sockets=node.sockets,
                           stopping=node.stopping, log=node.log,
                           on_refused=node.metrics.refused.inc,
                           on_accepted=node.metrics.accepted.inc)
