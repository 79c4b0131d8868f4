"""Accepting WebSockets: admission (:mod:`relay.net.admission`), the HTTP 503 refusal,
and the set of sockets being served.

Beyond the node's ``max_connections``, or ``max_pending_per_ip`` unauthenticated
connections from one address, or while the node stops, a new connection is refused
with HTTP 503 (``Retry-After: 5``) at the WebSocket handshake, before any frame; at
most one warning per :data:`~relay.net.admission.REFUSAL_LOG_INTERVAL` seconds is
logged about refusals. An admitted connection is accepted and handed to the
caller's ``serve`` (an :class:`~relay.net.accepted.AcceptedLink` in practice), and
kept in a :class:`SocketSet` while it is served, so that stopping can close it with
1001 (going away).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import trio
from trio_websocket import ConnectionClosed, Endpoint, WebSocketConnection, WebSocketRequest

from .admission import REFUSAL_LOG_INTERVAL, Admission, Refused, Ticket
from .writer import CLOSE_TIMEOUT

__all__ = ["SocketSet", "accept_websocket"]


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


Serve = Callable[[WebSocketConnection, str, Ticket], Awaitable[None]]
"""``await serve(ws, remote, ticket)``: serve one accepted WebSocket until it ends;
``remote`` is ``host:port``. Must not raise (except Cancelled)."""


async def accept_websocket(
    request: WebSocketRequest, serve: Serve, *, admission: Admission, sockets: SocketSet,
    stopping: trio.Event, log: logging.Logger,
    on_refused: Callable[[], None] = lambda: None, on_accepted: Callable[[], None] = lambda: None,
) -> None:
    """trio-websocket handler body: admit, accept and ``serve`` one connection, or
    refuse it with HTTP 503. Never raises (except Cancelled).

    Args:
        request: the WebSocket upgrade request.
        serve: see :data:`Serve`.
        admission, sockets: the node's counts and served sockets.
        stopping: set while the node stops (every new connection is refused).
        log: for the rate-limited refusal warning.
        on_refused, on_accepted: counters.
    """
    try:
        endpoint = request.remote
    except OSError as exc:  # reset before we asked (ENOTCONN): nobody left to answer
        log.debug("connection reset before its upgrade was answered (%s)", exc)
        return
    if isinstance(endpoint, Endpoint):
        address, remote = str(endpoint.address), f"{endpoint.address}:{endpoint.port}"
    else:
        address = remote = str(endpoint)
    try:
        if stopping.is_set():
            raise Refused("the node is stopping")
        ticket = admission.admit(address)
    except Refused as exc:
        on_refused()
        count = admission.note_refusal(trio.current_time())
        if count:
            log.warning("refused %d connection(s) in the last %g s, e.g. from %s: %s",
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
        on_accepted()
        sockets.add(ws)
        try:
            await serve(ws, remote, ticket)
        finally:
            sockets.discard(ws)
