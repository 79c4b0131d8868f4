"""The one Trio connection layer over :mod:`relay.protocol` (docs/protocol.md, "Connections").

* :func:`open_link` -> :class:`Link`: an owned WebSocket (stream always closed) with one
  reader that always drains it, one bounded writer, pipelined requests matched by id,
  a deadline per request, a bounded push channel and keepalive pings.
* :func:`open_client_connection` + :func:`authenticate`: a device's (or linking
  device's) handshake; :func:`open_peer_connection`: a node's outgoing peer link.

Used by ``wa-cli`` (:mod:`cli.connection`, :mod:`cli.linking`), the node's peer links
(:mod:`relay.services.federation`) and the tests. Imports :mod:`relay.protocol` only.
"""

from relay.protocol.keepalive import KeepaliveConfig

from .client import (
    PEER_SETTINGS,
    authenticate,
    handshake_step,
    open_client_connection,
    open_peer_connection,
)
from .errors import (
    ConnectFailed,
    ConnectionLost,
    FrameTooLarge,
    HandshakeFailed,
    NetError,
    Refused,
    RequestTimeout,
)
from .link import DEFAULT_SETTINGS, Link, LinkSettings, open_link
from .websocket import CLOSE_TIMEOUT, OwnedWebSocket, closed_text, failed_text, open_websocket

__all__ = [
    "CLOSE_TIMEOUT", "DEFAULT_SETTINGS", "PEER_SETTINGS", "ConnectFailed", "ConnectionLost",
    "FrameTooLarge", "HandshakeFailed", "KeepaliveConfig", "Link", "LinkSettings", "NetError", "OwnedWebSocket",
    "Refused", "RequestTimeout", "authenticate", "closed_text", "failed_text",
    "handshake_step", "open_client_connection", "open_link", "open_peer_connection",
    "open_websocket",
]
