"""A client WebSocket over a TCP (or TLS) stream that this module owns and always closes.

The one place for trio-websocket's leak workarounds: its own ``open_websocket_url`` /
``connect_websocket_url`` leave the TCP socket open in two cases, when cancelled
during the opening handshake, and after an abnormal closure (the other end died:
``aclose()`` then returns early without closing the stream), which leaks the socket
(``ResourceWarning``). :func:`open_websocket` opens the stream itself and closes it
on every exit; :meth:`OwnedWebSocket.abort` drops it at once (a dead link needs no
closing handshake).

Also here: the user-facing sentences for a failed connect (:func:`failed_text`) and a
closed socket (:func:`closed_text`).
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from urllib.parse import urlsplit

import trio
from trio_websocket import (
    CloseReason,
    ConnectionRejected,
    HandshakeError,
    WebSocketConnection,
    wrap_client_stream,
)

from .errors import ConnectFailed

__all__ = ["CLOSE_TIMEOUT", "OwnedWebSocket", "closed_text", "failed_text", "open_websocket",
           "split_url"]

CLOSE_TIMEOUT = 2.0  # seconds for the closing handshake before the stream is dropped


def split_url(url: str) -> tuple[str, str, int, str]:
    """``(scheme, host, port, resource)`` of a ``ws://`` or ``wss://`` URL.

    Raises:
        ConnectFailed: another scheme, no host, or a bad port.
    """
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise ConnectFailed(f"cannot connect to {url}: {exc}") from exc
    if parts.scheme not in ("ws", "wss") or not parts.hostname:
        raise ConnectFailed(f"cannot connect to {url}: not a ws:// or wss:// URL")
    port = port or (443 if parts.scheme == "wss" else 80)
    resource = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return parts.scheme, parts.hostname, port, resource


def failed_text(url: str, exc: BaseException, limit: float) -> str:
    """A user-facing sentence for a failed connect, e.g. ``cannot connect to ws://h:p: the
    node is busy (HTTP 503); retry in a few seconds``."""
    if isinstance(exc, trio.TooSlowError):
        return f"cannot connect to {url}: no WebSocket answer within {limit:g}s"
    if isinstance(exc, ConnectionRejected):
        if exc.status_code == 503:
            return f"cannot connect to {url}: the node is busy (HTTP 503); retry in a few seconds"
        return f"cannot connect to {url}: the node refused the connection (HTTP {exc.status_code})"
    return f"cannot connect to {url}: {str(exc) or type(exc).__name__}"


def closed_text(url: str, reason: CloseReason | None) -> str:
    """A user-facing sentence for a closed socket, e.g. ``connection to ws://h:p lost: the
    node went away without closing it (1006 abnormal closure)``."""
    if reason is None:
        return f"connection to {url} closed"
    name = (reason.name or "").replace("_", " ").lower()
    detail = f", {reason.reason}" if reason.reason else ""
    if reason.code == 1006:
        return (f"connection to {url} lost: the node went away without closing it "
                f"({reason.code} {name})")
    return f"connection to {url} closed ({reason.code} {name}{detail})"


@dataclass(frozen=True, slots=True)
class OwnedWebSocket:
    """An open WebSocket and the stream under it (closed by :func:`open_websocket`'s exit)."""

    ws: WebSocketConnection
    stream: trio.abc.Stream

    async def abort(self) -> None:
        """Close the stream now, without a closing handshake (the other end is gone or
        silent). trio-websocket then sees an abnormal closure (1006)."""
        await trio.aclose_forcefully(self.stream)


async def _open_stream(scheme: str, host: str, port: int) -> trio.abc.Stream:
    if scheme == "wss":
        return await trio.open_ssl_over_tcp_stream(
            host, port, ssl_context=ssl.create_default_context(), https_compatible=True)
    return await trio.open_tcp_stream(host, port)


@asynccontextmanager
async def open_websocket(
    nursery: trio.Nursery, url: str, *, connect_timeout: float, max_message_size: int,
    message_queue_size: int = 16, receive_buffer_size: int = 64 * 1024,
    shield_close: bool = True,
) -> AsyncIterator[OwnedWebSocket]:
    """Connect to ``url`` and yield the open WebSocket; on exit close it and its stream.

    Exit first tries the closing handshake (at most :data:`CLOSE_TIMEOUT` seconds,
    shielded unless ``shield_close`` is false, so a cancelled caller still says
    goodbye), then closes the stream in every case: a normal exit, an exception,
    cancellation, or a socket the other end already broke.

    Args:
        nursery: runs trio-websocket's reader task of this socket (it ends once the
            stream is closed).
        url: ``ws://host:port[/path]`` or ``wss://...``.
        connect_timeout: seconds for the TCP (+TLS) connect, and again for the
            WebSocket opening handshake.
        max_message_size: bytes; a larger message closes the socket (1009).
        message_queue_size: messages trio-websocket buffers before our reader takes them.
        receive_buffer_size: bytes per socket read (the library's default is 4 KiB).
        shield_close: whether a cancelled exit still waits for the closing handshake
            (a node stopping its peer links does not).

    Raises:
        ConnectFailed: bad URL, unreachable, refused (HTTP status), timed out, or not a
            WebSocket.
    """
    scheme, host, port, resource = split_url(url)
    try:
        with trio.fail_after(connect_timeout):
            stream = await _open_stream(scheme, host, port)
    except (OSError, trio.TooSlowError) as exc:
        raise ConnectFailed(failed_text(url, exc, connect_timeout)) from exc
    try:
        try:
            with trio.fail_after(connect_timeout):
                ws = await wrap_client_stream(
                    nursery, stream, host if port in (80, 443) else f"{host}:{port}", resource,
                    message_queue_size=message_queue_size, max_message_size=max_message_size,
                    receive_buffer_size=receive_buffer_size)
        except (OSError, HandshakeError, trio.TooSlowError) as exc:
            raise ConnectFailed(failed_text(url, exc, connect_timeout)) from exc
        owned = OwnedWebSocket(ws, stream)
        try:
            yield owned
        finally:
            with trio.move_on_after(CLOSE_TIMEOUT, shield=shield_close):
                await ws.aclose()
    finally:
        await trio.aclose_forcefully(stream)
