"""The client's WebSocket to a node, over a TCP (or TLS) stream that this module owns.

trio-websocket's own ``connect_websocket_url`` leaves the TCP socket open in two
cases: when cancelled during the opening handshake, and after an abnormal closure
(the node died: ``aclose()`` then returns early without closing the stream), which
leaks the socket (``ResourceWarning``). :func:`open_websocket` opens the stream
itself and always closes it on exit, like ``relay.federation.open_link_websocket``
(which ``cli`` may not import: it depends only on ``relay.protocol``).
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from urllib.parse import urlsplit

import trio
from trio_websocket import (
    ConnectionRejected,
    HandshakeError,
    WebSocketConnection,
    wrap_client_stream,
)

from relay.protocol import DEFAULT_LIMITS

from .errors import ConnectionFailed

__all__ = ["CLOSE_TIMEOUT", "WS_MAX_MESSAGE", "WS_QUEUE", "WS_RECEIVE_BUFFER", "open_websocket"]

WS_QUEUE = 16  # messages trio-websocket buffers before our reader task takes them
WS_RECEIVE_BUFFER = 64 * 1024  # bytes per socket read (the library's default is 4 KiB)
WS_MAX_MESSAGE = DEFAULT_LIMITS.max_peer_frame  # bytes; above any frame a node sends a client (1009)
CLOSE_TIMEOUT = 2.0  # seconds for the closing handshake before the stream is dropped


def _split(url: str) -> tuple[str, str, int, str]:
    """``(scheme, host, port, resource)`` of a ``ws://`` or ``wss://`` URL.

    Raises:
        ConnectionFailed: another scheme, no host, or a bad port.
    """
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise ConnectionFailed(f"cannot connect to {url}: {exc}") from exc
    if parts.scheme not in ("ws", "wss") or not parts.hostname:
        raise ConnectionFailed(f"cannot connect to {url}: not a ws:// or wss:// URL")
    port = port or (443 if parts.scheme == "wss" else 80)
    resource = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return parts.scheme, parts.hostname, port, resource


def _failed_text(url: str, exc: Exception, limit: float) -> str:
    if isinstance(exc, trio.TooSlowError):
        return f"cannot connect to {url}: no WebSocket answer within {limit:g}s"
    if isinstance(exc, ConnectionRejected):
        if exc.status_code == 503:
            return f"cannot connect to {url}: the node is busy (HTTP 503); retry in a few seconds"
        return f"cannot connect to {url}: the node refused the connection (HTTP {exc.status_code})"
    return f"cannot connect to {url}: {str(exc) or type(exc).__name__}"


async def _open_stream(scheme: str, host: str, port: int) -> trio.abc.Stream:
    if scheme == "wss":
        return await trio.open_ssl_over_tcp_stream(
            host, port, ssl_context=ssl.create_default_context(), https_compatible=True)
    return await trio.open_tcp_stream(host, port)


@asynccontextmanager
async def open_websocket(
    nursery: trio.Nursery, url: str, connect_timeout: float
) -> AsyncIterator[WebSocketConnection]:
    """Connect to ``url`` and yield the open WebSocket; on exit close it and its TCP stream.

    Exit first tries the closing handshake (at most :data:`CLOSE_TIMEOUT` seconds,
    shielded, so a cancelled caller still says goodbye), then closes the stream in
    every case: a normal exit, an exception, cancellation, or a socket the node
    already broke.

    Args:
        nursery: runs trio-websocket's reader task of this socket (it ends once the
            stream is closed).
        url: ``ws://host:port[/path]`` or ``wss://...``.
        connect_timeout: seconds for the TCP connect plus the WebSocket handshake.

    Raises:
        ConnectionFailed: bad URL, unreachable, refused, timed out, or not a WebSocket.
    """
    scheme, host, port, resource = _split(url)
    try:
        with trio.fail_after(connect_timeout):
            stream = await _open_stream(scheme, host, port)
    except (OSError, trio.TooSlowError) as exc:
        raise ConnectionFailed(_failed_text(url, exc, connect_timeout)) from exc
    try:
        try:
            with trio.fail_after(connect_timeout):
                ws = await wrap_client_stream(
                    nursery, stream, host if port in (80, 443) else f"{host}:{port}", resource,
                    message_queue_size=WS_QUEUE, max_message_size=WS_MAX_MESSAGE,
                    receive_buffer_size=WS_RECEIVE_BUFFER)
        except (OSError, HandshakeError, trio.TooSlowError) as exc:
            raise ConnectionFailed(_failed_text(url, exc, connect_timeout)) from exc
        try:
            yield ws
        finally:
            with trio.move_on_after(CLOSE_TIMEOUT, shield=True):
                await ws.aclose()
    finally:
        await trio.aclose_forcefully(stream)
