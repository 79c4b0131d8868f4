"""A client WebSocket over a TCP (or TLS) stream that this module owns and always closes.

The one place for trio-websocket's leak workarounds: its own ``open_websocket_url`` /
``connect_websocket_url`` leave the TCP socket open in two cases, when cancelled
during the opening handshake, and after an abnormal closure (the other end died:
``aclose()`` then returns early without closing the stream), which leaks the socket
(``ResourceWarning``). :func:`open_websocket` opens the stream itself and closes it
on every exit; :meth:`OwnedWebSocket.abort` drops it at once (a dead link needs no
closing handshake).

TLS (``wss://``): the client accepts the node's certificate without a CA check
(:func:`client_tls_context`): a node is authenticated by its node key, which signs
its challenge over the connection's channel binding, the SHA-256 of the certificate
the node presented (:attr:`OwnedWebSocket.binding`; docs/threat-model.md). Plain
``ws://`` is refused to anything but a loopback address (:func:`check_plain_allowed`).

Also here: the user-facing sentences for a failed connect (:func:`failed_text`) and a
closed socket (:func:`closed_text`).
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from urllib.parse import urlsplit

import trio
from trio_websocket import (
    CloseReason,
    ConnectionRejected,
    HandshakeError,
    WebSocketConnection,
)

from relay.protocol.cluster import is_loopback, server_end_point

from ._groups import single_leaf
from .errors import ConnectFailed
from .wsclose import wrap_client_stream

__all__ = ["CLOSE_TIMEOUT", "OwnedWebSocket", "check_plain_allowed", "client_tls_context",
           "closed_text", "failed_text", "is_loopback", "open_websocket", "split_url"]

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


def check_plain_allowed(url: str) -> None:
    """Refuse a plain ``ws://`` URL whose host is not a loopback address (no TLS: anyone
    on the path would read and alter the traffic).

    Raises:
        ConnectFailed: a ``ws://`` URL to another host (or not a ws/wss URL at all).
    """
    scheme, host, _port, _resource = split_url(url)
    if scheme == "ws" and not is_loopback(host):
        raise ConnectFailed(f"refusing plain {url}: ws:// is allowed only to a loopback "
                            "address; use wss://")


def client_tls_context() -> ssl.SSLContext:
    """The TLS context of every outgoing ``wss://`` connection: TLS 1.2 or later, no CA
    or host name check (the node proves itself with its node key over the channel
    binding; a CA adds nothing to that pin and local clusters have self-signed
    certificates)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # no CA store to load: nothing to verify
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


def failed_text(url: str, exc: BaseException, limit: float) -> str:
    """A user-facing sentence for a failed connect, e.g. ``cannot connect to ws://h:p: the
    node is busy (HTTP 503); retry in a few seconds``."""
    if isinstance(exc, trio.TooSlowError):
        return f"cannot connect to {url}: no WebSocket answer within {limit:g}s"
    if isinstance(exc, ConnectionRejected):
        if exc.status_code == 503:
            return f"cannot connect to {url}: the node is busy (HTTP 503); retry in a few seconds"
        if exc.status_code < 300 or exc.status_code == 404:
            return (f"cannot connect to {url}: it answers HTTP {exc.status_code} but is not a "
                    "wa-relay node (no WebSocket upgrade); check the URL and port")
        return f"cannot connect to {url}: the node refused the connection (HTTP {exc.status_code})"
    tls = _tls_error(exc)
    if tls is not None:
        if url.startswith("wss://"):
            return (f"cannot connect to {url}: the TLS handshake failed ({tls}); if the node "
                    "serves plain WebSocket on this port, use ws://")
        return f"cannot connect to {url}: TLS error ({tls})"
    if url.startswith("ws://") and isinstance(exc, (HandshakeError, trio.BrokenResourceError)):
        return (f"cannot connect to {url}: the other end broke off the WebSocket handshake "
                f"({str(exc) or type(exc).__name__}); if it serves TLS on this port, use wss://")
    return f"cannot connect to {url}: {str(exc) or type(exc).__name__}"


def _tls_error(exc: BaseException) -> str | None:
    """The reason of a failed TLS handshake behind ``exc`` (trio wraps ``ssl.SSLError``
    in ``BrokenResourceError``), else ``None``."""
    seen = exc
    for _ in range(4):
        if isinstance(seen, ssl.SSLError):
            return seen.reason or str(seen)
        if seen.__cause__ is None and seen.__context__ is None:
            return None
        seen = seen.__cause__ or seen.__context__
    return None


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

    @property
    def binding(self) -> bytes:
        """The connection's channel binding: SHA-256 of the certificate the node
        presented (``wss://``), ``b""`` on plain ``ws://``."""
        if not isinstance(self.stream, trio.SSLStream):
            return b""
        return server_end_point(self.stream.getpeercert(binary_form=True))

    async def abort(self) -> None:
        """Close the stream now, without a closing handshake (the other end is gone or
        silent). trio-websocket then sees an abnormal closure (1006)."""
        await trio.aclose_forcefully(self.stream)


async def _open_stream(scheme: str, host: str, port: int,
                       local_address: str | None) -> trio.abc.Stream:
    tcp = await trio.open_tcp_stream(host, port, local_address=local_address)
    if scheme != "wss":
        return tcp
    tls = trio.SSLStream(tcp, client_tls_context(), server_hostname=host,
                         https_compatible=True)
    try:
        await tls.do_handshake()
    except BaseException:
        await trio.aclose_forcefully(tcp)
        raise
    return tls


class _EofWatch(trio.abc.Stream):
    """The stream under a client WebSocket, noting when the other end closed or reset it
    (``eof``, on a read or a write) or trio-websocket closed it (a malformed upgrade
    answer): trio-websocket waits for the answer to its opening handshake until its
    timeout even when the connection was closed first (a proxy or load balancer whose
    node is down accepts and closes), so :func:`open_websocket` races the two."""

    def __init__(self, inner: trio.abc.Stream) -> None:
        self.inner = inner
        self.eof = trio.Event()

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        try:
            await self.inner.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self.eof.set()  # reset: trio-websocket's reader then stops without reading
            raise

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        try:
            data = await self.inner.receive_some(max_bytes)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self.eof.set()
            raise
        if not data:
            self.eof.set()
        return data

    async def aclose(self) -> None:
        self.eof.set()  # trio-websocket closed it (e.g. a malformed upgrade answer)
        await self.inner.aclose()


async def _opening_handshake(nursery: trio.Nursery, stream: _EofWatch, host: str,
                             resource: str, **options: int) -> WebSocketConnection | None:
    """``wrap_client_stream``, or ``None`` as soon as the other end closed the stream
    before answering."""
    ws: WebSocketConnection | None = None
    async with trio.open_nursery() as race:

        async def closed() -> None:
            await stream.eof.wait()
            race.cancel_scope.cancel()

        race.start_soon(closed)
        ws = await wrap_client_stream(nursery, stream, host, resource, **options)
        race.cancel_scope.cancel()
    return ws


@contextmanager
def _rejections(url: str, limit: float) -> Iterator[None]:
    """Exceptions of trio-websocket's reader task come as a group from its nursery: a
    refused upgrade (``ConnectionRejected``, HTTP 503 at admission) becomes
    :class:`ConnectFailed`; any other single exception is raised as itself."""
    try:
        yield
    except BaseExceptionGroup as group:  # re-raised, never swallowed
        leaf = single_leaf(group)
        if leaf is None:
            raise
        if isinstance(leaf, HandshakeError):
            status = leaf.status_code if isinstance(leaf, ConnectionRejected) else None
            raise ConnectFailed(failed_text(url, leaf, limit), http_status=status) from leaf
        raise leaf from leaf.__cause__


@asynccontextmanager
async def open_websocket(
    url: str, *, connect_timeout: float, max_message_size: int,
    message_queue_size: int = 16, receive_buffer_size: int = 64 * 1024,
    shield_close: bool = True, local_address: str | None = None,
) -> AsyncIterator[OwnedWebSocket]:
    """Connect to ``url`` and yield the open WebSocket; on exit close it and its stream.

    Exit first tries the closing handshake (at most :data:`CLOSE_TIMEOUT` seconds,
    shielded unless ``shield_close`` is false, so a cancelled caller still says
    goodbye), then closes the stream in every case: a normal exit, an exception,
    cancellation, or a socket the other end already broke. trio-websocket's reader
    task runs in a nursery of its own, inside.

    Args:
        url: ``ws://host:port[/path]`` or ``wss://...``.
        connect_timeout: seconds for the TCP (+TLS) connect, and again for the
            WebSocket opening handshake.
        max_message_size: bytes; a larger message closes the socket (1009).
        message_queue_size: messages trio-websocket buffers before our reader takes them.
        receive_buffer_size: bytes per socket read (the library's default is 4 KiB).
        shield_close: whether a cancelled exit still waits for the closing handshake
            (a node stopping its peer links does not).
        local_address: the local IP address to connect from (default: the system's choice).

    Raises:
        ConnectFailed: bad URL, plain ``ws://`` to a host that is not loopback,
            unreachable, refused (``http_status``), timed out, closed before the
            WebSocket handshake was answered (at once, not after the timeout), or not
            a WebSocket.
    """
    check_plain_allowed(url)
    scheme, host, port, resource = split_url(url)
    try:
        with trio.fail_after(connect_timeout):
            stream = await _open_stream(scheme, host, port, local_address)
    except (OSError, trio.BrokenResourceError, trio.TooSlowError) as exc:
        raise ConnectFailed(failed_text(url, exc, connect_timeout)) from exc
    try:
        with _rejections(url, connect_timeout):
            async with trio.open_nursery() as nursery:
                try:
                    with trio.fail_after(connect_timeout):
                        opened = await _opening_handshake(
                            nursery, _EofWatch(stream),
                            host if port in (80, 443) else f"{host}:{port}",
                            resource, message_queue_size=message_queue_size,
                            max_message_size=max_message_size,
                            receive_buffer_size=receive_buffer_size)
                except (OSError, HandshakeError, trio.TooSlowError) as exc:
                    status = exc.status_code if isinstance(exc, ConnectionRejected) else None
                    raise ConnectFailed(failed_text(url, exc, connect_timeout),
                                        http_status=status) from exc
                if opened is None:
                    hint = ("; if it serves TLS on this port, use wss://"
                            if url.startswith("ws://") else "")
                    raise ConnectFailed(f"cannot connect to {url}: the connection was closed "
                                        "before the WebSocket handshake was answered (is the "
                                        f"node running?){hint}")
                ws = opened
                try:
                    yield OwnedWebSocket(ws, stream)
                finally:
                    with trio.move_on_after(CLOSE_TIMEOUT, shield=shield_close):
                        await ws.aclose()
                    nursery.cancel_scope.cancel()
    finally:
        await trio.aclose_forcefully(stream)
