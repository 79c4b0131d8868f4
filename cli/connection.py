"""One authenticated WebSocket from a device to its home node (docs/protocol.md, "Handshake").

:func:`open_connection` opens the socket (:mod:`cli.websocket`, which owns the TCP
stream), runs ``hello`` -> ``challenge``, publishes the device's own signed device
list if the home does not have it yet, signs the challenge (``auth``) and follows
``error moved`` to the user's home, saving the new URL in the state. The yielded
:class:`Connection` multiplexes requests by
request id; its reader task (:meth:`Connection.run_reader`) always drains the
socket (trio-websocket stops answering pings when its queue is full) and routes
each frame: answers to their waiting request, ``key_count`` pushes to a
callback, ``deliver``/``synced``/connection errors to a bounded push channel.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import trio
from trio_websocket import CloseReason, ConnectionClosed, WebSocketConnection

from relay.protocol import (
    DEFAULT_LIMITS,
    SUPPORTED_VERSIONS,
    ErrorCode,
    Limits,
    RemoteProtocolError,
    auth_message,
    read_frame,
    write_frame,
)
from relay.protocol.frames import (
    Auth,
    AuthOk,
    Challenge,
    Deliver,
    Error,
    Frame,
    Hello,
    KeyCount,
    PutDevices,
    Synced,
    check_budget,
)

from .errors import ConnectionFailed, ConnectionLost, DeviceRemoved, RelayError
from .sendorder import SendOrder
from .state import State
from .websocket import CLOSE_TIMEOUT, open_websocket

log = logging.getLogger(__name__)

AGENT = "wa-cli/0.1"
MAX_MOVES = 3
PUSH_BUFFER = 1024  # > the node's 256 unacknowledged deliveries in flight per connection


def _closed_text(url: str, reason: CloseReason | None) -> str:
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


class _Waiter:
    __slots__ = ("event", "frame", "error")

    def __init__(self) -> None:
        self.event = trio.Event()
        self.frame: Frame | None = None
        self.error: Exception | None = None


class Connection:
    """An authenticated connection. Create with :func:`open_connection`.

    Attributes:
        url: the home node's WebSocket URL.
        node_id: the home node's id (from its challenge).
        otk_count: one-time keys the node held for this device at ``auth_ok``.
        pushes: receive side of the bounded push channel (``Deliver``,
            ``Synced``, unsolicited ``Error``); closed when the connection ends.
    """

    def __init__(self, ws: WebSocketConnection, url: str, challenge: Challenge, otk_count: int):
        self._ws = ws
        self.url = url
        self.node_id = challenge.node_id
        self.otk_count = otk_count
        self.limits = Limits.for_node(challenge.max_frame or DEFAULT_LIMITS.max_frame,
                                      challenge.max_envelope)
        self._ids = itertools.count(10)
        self._pending: dict[int, _Waiter] = {}
        self._stream_ids: set[int] = set()
        self._closed: ConnectionLost | None = None
        self._push_send, self.pushes = trio.open_memory_channel(PUSH_BUFFER)
        self.on_key_count: Callable[[int], None] = lambda count: None

    async def _write(self, frame: Frame) -> None:
        if self._closed is not None:
            raise self.lost()
        try:
            await self._ws.send_message(write_frame(frame))
        except ConnectionClosed as exc:
            raise ConnectionLost(_closed_text(self.url, exc.reason)) from exc

    def lost(self) -> ConnectionLost:
        """A new :class:`ConnectionLost` saying why the connection ended (who closed it,
        the WebSocket close code), for callers that notice the end on :attr:`pushes`."""
        return ConnectionLost(str(self._closed or f"connection to {self.url} closed"))

    async def request(
        self, frame_cls: type[Frame], *, place: tuple[SendOrder, int] | None = None, **fields
    ) -> Frame:
        """Send a request and wait for its answer.

        Args:
            place: ``(order, place)``: write the frame only at that place's turn in
                ``order`` (:class:`cli.sendorder.SendOrder`), and mark the place done
                once written (or on any failure or cancellation before that).
            fields: the frame's fields (not ``id``).

        Returns:
            The answer frame (never an ``Error``).

        Raises:
            RelayError: the node answered ``error``.
            ConnectionLost: the connection closed first.
        """
        rid = next(self._ids)
        waiter = self._pending[rid] = _Waiter()
        try:
            try:
                frame = frame_cls(id=rid, **fields)
                try:
                    check_budget(frame, self.limits)
                except RemoteProtocolError as exc:  # refused before sending, like the node would
                    raise RelayError(Error(id=rid, code=exc.code.value,
                                           message=f"{exc.message} (not sent)")) from None
                if place is not None:
                    await place[0].wait_turn(place[1])
                await self._write(frame)
            finally:
                if place is not None:
                    place[0].done(place[1])
            await waiter.event.wait()
        finally:
            self._pending.pop(rid, None)
        if waiter.error is not None:
            raise waiter.error
        if isinstance(waiter.frame, Error):
            raise RelayError(waiter.frame)
        return waiter.frame

    async def send(self, frame_cls: type[Frame], *, stream: bool = False, **fields) -> int:
        """Send a frame that gets no direct answer (``ack`` with id 0, ``sync``).

        Args:
            stream: the request starts a stream (``sync``): an ``error`` carrying
                its id goes to :attr:`pushes`.

        Returns:
            The request id used (0 for ``ack``).

        Raises:
            ConnectionLost: the connection is closed.
        """
        rid = 0 if frame_cls.TYPE == "ack" else next(self._ids)
        if stream:
            self._stream_ids.add(rid)
        await self._write(frame_cls(id=rid, **fields))
        return rid

    async def run_reader(self) -> None:
        """Drain the socket until it closes, routing every frame (see the module docstring).

        Runs as a task in the client's nursery; returns when the connection closes.
        Outstanding requests then fail with :class:`ConnectionLost` and :attr:`pushes` ends.
        """
        try:
            while True:
                try:
                    data = await self._ws.get_message()
                except ConnectionClosed as exc:
                    self._closed = ConnectionLost(_closed_text(self.url, exc.reason))
                    return
                try:
                    frame = read_frame(data)
                except RemoteProtocolError as exc:
                    log.warning("ignoring an invalid frame from %s: %s", self.url, exc)
                    continue
                waiter = self._pending.pop(frame.id, None) if frame.id else None
                if waiter is not None:
                    waiter.frame = frame
                    waiter.event.set()
                elif isinstance(frame, KeyCount):
                    self.on_key_count(frame.otk_count)
                elif isinstance(frame, Deliver | Synced) or (
                    isinstance(frame, Error) and (frame.id == 0 or frame.id in self._stream_ids)
                ):
                    await self._push_send.send(frame)
                else:
                    log.debug("dropping a late answer (id %d) from %s", frame.id, self.url)
        finally:
            if self._closed is None:
                self._closed = ConnectionLost(f"connection to {self.url} closed")
            for waiter in self._pending.values():
                waiter.error = self.lost()
                waiter.event.set()
            self._pending.clear()
            self._push_send.close()

    async def aclose(self) -> None:
        """Close the WebSocket now (closing handshake at most ``CLOSE_TIMEOUT`` seconds,
        shielded); outstanding requests fail with :class:`ConnectionLost`. The TCP stream
        is closed at the latest when :func:`open_connection` exits."""
        with trio.move_on_after(CLOSE_TIMEOUT, shield=True):
            await self._ws.aclose()


async def exchange(ws: WebSocketConnection, frame: Frame) -> Frame:
    """Handshake-phase request/answer on a socket without a reader task: send ``frame``
    and return the first frame carrying its id (others are skipped).

    Raises:
        RelayError: the answer is an ``error``.
        trio_websocket.ConnectionClosed, RemoteProtocolError: from the socket / decoder.
    """
    await ws.send_message(write_frame(frame))
    while True:
        answer = read_frame(await ws.get_message())
        if answer.id == frame.id:
            break
    if isinstance(answer, Error):
        raise RelayError(answer)
    return answer


async def _authenticate(ws: WebSocketConnection, state: State) -> tuple[Challenge, AuthOk] | str:
    """Returns ``(challenge, auth_ok)``, or the URL from ``error moved``."""
    challenge = await exchange(
        ws, Hello(id=1, versions=list(SUPPORTED_VERSIONS), role="client", agent=AGENT)
    )
    if not isinstance(challenge, Challenge) or len(challenge.nonce) != 32:
        raise ConnectionFailed(f"unexpected answer to hello: {challenge.TYPE}")
    try:
        own = state.device_lists.get(state.user_id)
        if own is not None and own.parsed.version > state.published_version:
            try:
                await exchange(ws, PutDevices(id=2, device_list=own.signed))
            except RelayError as exc:
                if exc.code != ErrorCode.STALE_VERSION:  # already there (a retry after a crash)
                    raise
            state.published_version = own.parsed.version
            await state.asave()
        signature = state.identity.sign(
            auth_message(challenge.nonce, challenge.node_id, state.user_id, state.device_id)
        )
        ok = await exchange(
            ws, Auth(id=3, user_id=state.user_id, device_id=state.device_id, signature=signature)
        )
    except RelayError as exc:
        if exc.code == ErrorCode.MOVED and exc.frame.url:
            return exc.frame.url
        if exc.code == ErrorCode.UNKNOWN_DEVICE:
            raise DeviceRemoved(
                f"this device ({state.device_id}) is no longer in the account's device list: "
                "it was removed (or never approved); link it again with 'wa-cli link'"
            ) from exc
        raise
    if not isinstance(ok, AuthOk):
        raise ConnectionFailed(f"unexpected answer to auth: {ok.TYPE}")
    return challenge, ok


async def _handshake(ws: WebSocketConnection, state: State, url: str,
                     limit: float) -> tuple[Challenge, AuthOk] | str:
    """:func:`_authenticate` within ``limit`` seconds, its failures as ``ConnectionFailed``."""
    try:
        with trio.fail_after(limit):
            return await _authenticate(ws, state)
    except trio.TooSlowError as exc:
        raise ConnectionFailed(f"handshake with {url} timed out after {limit:g}s") from exc
    except ConnectionClosed as exc:
        raise ConnectionFailed(f"{url} closed the connection ({exc.reason})") from exc
    except RemoteProtocolError as exc:
        raise ConnectionFailed(f"{url} sent an invalid frame: {exc}") from exc


@asynccontextmanager
async def open_connection(
    nursery: trio.Nursery, state: State, *, connect_timeout: float
) -> AsyncIterator[Connection]:
    """Connect and authenticate to ``state.relay_url``, following ``moved`` (at most 3 hops),
    and yield the :class:`Connection`; on exit close its WebSocket and TCP stream
    (:func:`cli.websocket.open_websocket`), also after the node broke the connection.

    The caller starts :meth:`Connection.run_reader` in ``nursery`` (which also runs
    trio-websocket's own reader task, ended by the exit).

    Args:
        nursery: owns trio-websocket's background task of the socket.
        state: the device state; ``relay_url`` and ``published_version`` are updated and saved.
        connect_timeout: seconds for each connection attempt including its handshake.

    Raises:
        ConnectionFailed: unreachable, timed out, closed, or invalid answers.
        DeviceRemoved: the device is not in the account's current list (``unknown_device``).
        RelayError: refused (``unknown_user``, ``unauthorized``, ...).
    """
    url = state.relay_url
    for _ in range(MAX_MOVES + 1):
        async with open_websocket(nursery, url, connect_timeout) as ws:
            result = await _handshake(ws, state, url, connect_timeout)
            if isinstance(result, tuple):
                challenge, ok = result
                yield Connection(ws, url, challenge, ok.otk_count)
                return
        if result == url:
            raise ConnectionFailed(f"{url} redirects to itself")
        log.info("home moved: %s -> %s", url, result)
        url = state.relay_url = result
        await state.asave()
    raise ConnectionFailed(f"too many redirects (last: {url})")
