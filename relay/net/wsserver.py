"""The node's WebSocket server: trio-websocket's ``serve_websocket`` serving
:class:`relay.net.wsio.GatedWebSocket` connections, with what a node facing the
internet needs on top.

* **One boundary per connection.** trio-websocket's server has none: an exception
  out of one connection's tasks would stop the node. :func:`serve_gated_websocket`
  logs it with the connection's address (at most one line per
  :data:`ERROR_LOG_INTERVAL` seconds, counting the others) and goes on; the
  connection-state errors of trio-websocket itself are fixed in
  :class:`relay.net.wsclose.SafeWebSocket`. A connection refused at the
  upgrade (400, 503) is closed ``disconnect_timeout`` seconds after its answer at
  the latest (trio-websocket's reader otherwise read on for as long as the client
  kept it open).

* **Caps before the upgrade request.** A TCP (or TLS) connection that has not sent
  its WebSocket upgrade request yet holds a socket for up to ``connect_timeout``
  seconds, before :class:`relay.net.admission.Admission` counts it. With an
  ``opening`` admission, such connections are counted per address and in all from
  the moment they are accepted: over a cap the oldest one past the grace period
  is closed, or else the new one is closed at once, so idle sockets from one
  address cannot use up the node's file descriptors (slowloris).
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Awaitable, Callable

import trio
from trio_websocket import WebSocketRequest, WebSocketServer

from .admission import Admission, Refused, Ticket
from .wsio import FastServerWS, GatedWebSocket

__all__ = ["ERROR_LOG_INTERVAL", "serve_gated_websocket"]


async def _cancel_when_read(reading: trio.Event, scope: trio.CancelScope) -> None:
    await reading.wait()  # the reader found the stream broken, or refused the request
    scope.cancel()


async def _read(connection: GatedWebSocket, done: trio.Event) -> None:
    try:
        await connection._reader_task()
    finally:
        done.set()


def _peer_host(stream: trio.abc.Stream) -> str:
    """The remote address of an accepted (TCP or TLS-over-TCP) stream, else ``"?"``."""
    inner = getattr(stream, "transport_stream", stream)
    try:
        return str(inner.socket.getpeername()[0])  # type: ignore[attr-defined]
    except (AttributeError, OSError, IndexError, TypeError):
        return "?"


ERROR_LOG_INTERVAL = 10.0
"""Seconds between two log lines (with traceback) about unexpected connection errors;
the next line says how many were not logged meanwhile."""


class _GatedServer(WebSocketServer):
    opening: Admission | None = None
    log: logging.Logger = logging.getLogger(__name__)
    error_log_interval: float = ERROR_LOG_INTERVAL
    _error_logged_at: float = -float("inf")
    _errors_held: int = 0

    async def _handle_connection(self, stream: trio.abc.Stream) -> None:
        # The per-connection boundary: trio-websocket's server has none, so an error out
        # of one connection's tasks (its reader task, the handler's accept or reject)
        # would end the server's nursery and stop the node. Log it and go on; the
        # stream is closed by trio.serve_listeners (aclose_forcefully) on return.
        host = _peer_host(stream)
        try:
            await self._handle_admitted(stream, host)
        except* Exception as group:  # noqa: BLE001 - the per-connection boundary
            self._log_error(host, group)

    def _log_error(self, host: str, group: BaseException) -> None:
        # At most one line per interval: a client that found a way to trigger an error
        # must not fill the disk with tracebacks.
        now = trio.current_time()
        if now - self._error_logged_at < self.error_log_interval:
            self._errors_held += 1
            return
        held, self._errors_held, self._error_logged_at = self._errors_held, 0, now
        self.log.error("connection from %s: unexpected error, dropped%s", host,
                       f" ({held} more not logged since the last one)" if held else "",
                       exc_info=group)

    async def _handle_admitted(self, stream: trio.abc.Stream, host: str) -> None:
        if self.opening is None:
            await self._handle_opened(stream, None)
            return
        try:
            ticket = self.opening.admit(host)
        except Refused:  # over a cap before the upgrade request: close at once
            await trio.aclose_forcefully(stream)
            return
        with ticket:
            await self._handle_opened(stream, ticket)

    async def _handle_opened(self, stream: trio.abc.Stream, ticket: Ticket | None) -> None:
        # trio-websocket 0.12's WebSocketServer._handle_connection, building a GatedWebSocket.
        async with trio.open_nursery() as nursery:
            connection = GatedWebSocket(
                stream, FastServerWS(),
                message_queue_size=self._message_queue_size,
                max_message_size=self._max_message_size,
                receive_buffer_size=self._receive_buffer_size)
            reading = trio.Event()
            nursery.start_soon(_read, connection, reading)
            request = None
            with trio.move_on_after(self._connect_timeout) as waiting:
                if ticket is not None:
                    ticket.on_evict = waiting.cancel
                async with trio.open_nursery() as opening:
                    # A stream that broke before the request (e.g. a plain ws:// client
                    # on a TLS port: the TLS handshake failed), or a request the reader
                    # refused (HTTP 400), is closed at once, so the client learns of it
                    # now and its place is free, not after the connect timeout.
                    opening.start_soon(_cancel_when_read, reading, opening.cancel_scope)
                    request = await connection._get_request()
                    opening.cancel_scope.cancel()
            if ticket is not None:
                ticket.release()  # from here the node's admission counts it
            if request is None:
                nursery.cancel_scope.cancel()
                await stream.aclose()
                return
            try:
                await self._handler(request)
            finally:
                with trio.move_on_after(self._disconnect_timeout):
                    await connection.aclose()
                # A refused request (HTTP 503) leaves aclose nothing to do and the
                # reader reading whatever the client still sends: it gets
                # ``disconnect_timeout`` seconds to see the client go, then the
                # stream is closed, so a refused client cannot keep its socket.
                nursery.cancel_scope.deadline = min(
                    nursery.cancel_scope.deadline, trio.current_time() + self._disconnect_timeout)


async def serve_gated_websocket(
    handler: Callable[[WebSocketRequest], Awaitable[None]], host: str | None, port: int,
    ssl_context: ssl.SSLContext | None, *, message_queue_size: int, max_message_size: int,
    receive_buffer_size: int, connect_timeout: float, disconnect_timeout: float,
    opening: Admission | None = None, log: logging.Logger | None = None,
    error_log_interval: float = ERROR_LOG_INTERVAL,
    task_status: trio.TaskStatus[WebSocketServer] = trio.TASK_STATUS_IGNORED,
) -> None:
    """``trio_websocket.serve_websocket`` whose connections are :class:`GatedWebSocket`;
    runs until cancelled and supports ``nursery.start`` (started with the server).

    Args:
        opening: counts and caps connections from their accept until their upgrade
            request came (or ``connect_timeout`` seconds passed): see the module
            docstring; ``None``: not counted.
        log: where an unexpected error of one connection is logged (that connection
            is dropped, the server goes on); default: this module's logger.
        error_log_interval: seconds between two such log lines (the errors between
            are counted in the next line)."""
    try:
        if ssl_context is None:
            listeners = await trio.open_tcp_listeners(port, host=host)
        else:
            listeners = await trio.open_ssl_over_tcp_listeners(
                port, ssl_context, host=host, https_compatible=True)
    except OSError as exc:  # name the address: "Address already in use" alone does not
        raise OSError(exc.errno, f"cannot listen on {host or '*'}:{port}: "
                                 f"{exc.strerror or exc}") from exc
    server = _GatedServer(
        handler, listeners, message_queue_size=message_queue_size,
        max_message_size=max_message_size, receive_buffer_size=receive_buffer_size,
        connect_timeout=connect_timeout, disconnect_timeout=disconnect_timeout)
    server.opening = opening
    if log is not None:
        server.log = log
    server.error_log_interval = error_log_interval
    await server.run(task_status=task_status)
