"""The one Trio connection layer: a :class:`Link` is an open WebSocket driven by the
sans-I/O :class:`~relay.protocol.session.Session` (request ids, window, keepalive,
classification of what arrives), for devices, linking devices and peer links alike.

Tasks of one link, in the nursery of :func:`open_link`:

* the **reader** always drains the socket (trio-websocket stops answering pings and
  closes when its own queue is full) and routes each frame: an answer to its waiting
  request, the other end's ``ping`` to an ``ok``, a push to :attr:`Link.pushes` (a
  bounded channel: when it is full the reader waits, and the keepalive pauses,
  because the silence is then ours);
* the **writer** is the only task that writes; frames go through a bounded queue
  (``write_buffer`` frames), which gives backpressure and keeps the order in which
  they were queued;
* the **keepalive** pings after ``interval`` seconds of silence and closes the link
  when nothing arrived ``timeout`` seconds after that ping.

A link ends when the other end closes it, the socket breaks, the keepalive gives up, or
:meth:`Link.aclose`. Then waiting requests fail with
:class:`~relay.net.errors.ConnectionLost`, :attr:`Link.pushes` ends, and
:meth:`Link.wait_closed` returns. The body of :func:`open_link` is not cancelled: it
notices through those.
"""

from __future__ import annotations

import logging
import math
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import trio
from trio_websocket import ConnectionClosed

from relay.protocol import DEFAULT_LIMITS, Limits, RemoteProtocolError, read_frame, write_frame
from relay.protocol.cluster import PinnedCluster
from relay.protocol.frames import Frame
from relay.protocol.handshake import Handshake
from relay.protocol.keepalive import KeepaliveAction
from relay.protocol.session import Incoming, Session

from ._groups import unwrap_single
from .errors import ConnectionLost, FrameTooLarge, RequestTimeout
from .settings import DEFAULT_SETTINGS, LinkSettings
from .websocket import CLOSE_TIMEOUT, OwnedWebSocket, closed_text, open_websocket

__all__ = ["DEFAULT_SETTINGS", "Link", "LinkSettings", "open_link"]

log = logging.getLogger(__name__)


_DEFAULT = object()  # request(timeout=...) not given: the settings' request_timeout


class _Waiter:
    __slots__ = ("answer", "event", "sent")

    def __init__(self) -> None:
        self.event = trio.Event()
        self.answer: Frame | None = None
        self.sent = False  # handed to the socket (the other end may have it)


class Link:
    """One open connection. Create with :func:`open_link` (or :mod:`relay.net.client`).

    Methods may be called from many tasks at once.

    Attributes:
        url: where it is connected.
        settings: its :class:`LinkSettings`.
        limits: decoding limits for received frames.
        max_send: largest frame the other end accepts, bytes (``None``: no check);
            the handshake sets it from the other end's size budget.
        pushes: receive side of the bounded push channel (``deliver``, ``synced``,
            ``link_data``, ``key_count`` and ``error`` with id 0, ``error`` ending a
            stream); ends when the link ends.
        intercept: called by the reader with each push first; when it returns True
            the push is consumed (it must not block).
        handshake: the sans-I/O handshake run over this link (:mod:`relay.net.client`),
            ``None`` for a bare link.
        cluster: the pinned cluster description the node was checked against
            (:mod:`relay.net.client`), ``None`` if it was not checked.
        socket: the :class:`~relay.net.websocket.OwnedWebSocket` (for tests and tools
            that write raw bytes with ``socket.ws.send_message``; never read from it).
        close_code: the WebSocket close code once the socket closed (1000 normal, 1006
            abnormal, ...), ``None`` while open or when we ended the link first.
    """

    def __init__(self, sock: OwnedWebSocket, url: str, settings: LinkSettings,
                 limits: Limits) -> None:
        self.url = url
        self.settings = settings
        self.limits = limits
        self.max_send: int | None = None
        self._sock = self.socket = sock
        self.close_code: int | None = None
        self._session = Session(window=settings.window, keepalive=settings.keepalive,
                                now=trio.current_time())
        self._slots = trio.Semaphore(settings.window)
        self._waiters: dict[int, _Waiter] = {}
        self._out_send, self._out_recv = trio.open_memory_channel[tuple[bytes, _Waiter | None]](
            settings.write_buffer)
        self._push_send, self.pushes = trio.open_memory_channel[Frame](settings.push_buffer)
        self.intercept: Callable[[Frame], bool] | None = None
        self.handshake: Handshake | None = None
        self.cluster: PinnedCluster | None = None
        self._reason: str | None = None
        self._aborted = False
        self._close_with: tuple[int, str | None] | None = None  # the first aclose()'s
        self._closing: trio.Event | None = None  # set once the first aclose() is done
        self._closed = trio.Event()
        self._writer_done = trio.Event()

    # ----------------------------------------------------------------- state

    @property
    def is_closed(self) -> bool:
        """Whether the link has ended (for any reason)."""
        return self._reason is not None

    @property
    def close_reason(self) -> str | None:
        """Why the link ended (a sentence naming the URL), or ``None`` while open."""
        return self._reason

    def lost(self, *, sent: bool = False) -> ConnectionLost:
        """A new :class:`ConnectionLost` saying why the link ended (for callers that
        notice the end on :attr:`pushes`)."""
        return ConnectionLost(self._reason or f"connection to {self.url} closed", sent=sent)

    async def wait_closed(self) -> None:
        """Return once the link has ended."""
        await self._closed.wait()

    # ----------------------------------------------------------------- sending

    def _encode(self, frame: Frame) -> bytes:
        data = write_frame(frame)
        if self.max_send is not None and len(data) > self.max_send:
            raise FrameTooLarge(
                f"a {frame.TYPE} frame of {len(data)} bytes exceeds the limit of "
                f"{self.max_send} bytes of {self.url}", size=len(data), limit=self.max_send)
        return data

    async def _enqueue(self, data: bytes, waiter: _Waiter | None) -> None:
        try:
            await self._out_send.send((data, waiter))
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            raise self.lost() from None

    async def request(
        # the link owns this deadline (not the caller's fail_after) to tell "not sent"
        # from "sent, no answer" and to give the id up: hence a timeout parameter
        self, frame: Frame, *, timeout: float | None | object = _DEFAULT,  # noqa: ASYNC109
        on_queued: Callable[[], None] | None = None,
    ) -> Frame:
        """Send a request and return its answer (an ``error`` frame is returned, not raised).

        The request gets the next id (``frame.id`` is replaced); many requests may be
        in flight at once (up to ``settings.window``; more wait for a slot), and their
        answers may come in any order.

        Args:
            timeout: seconds from now until the answer must have come (waiting for a
                window slot and the writer included); default ``settings.request_timeout``;
                ``None``: no deadline.
            on_queued: called once the frame is queued for the writer (frames leave in
                the order they were queued), not called if it never was.

        Raises:
            RequestTimeout: no answer in time (``sent`` says whether it left); the
                request is given up, the link stays open.
            ConnectionLost: the link ended first (``sent`` likewise).
            FrameTooLarge: above :attr:`max_send`; nothing was sent.
        """
        limit = self.settings.request_timeout if timeout is _DEFAULT else timeout
        waiter: _Waiter | None = None
        with trio.move_on_after(math.inf if limit is None else limit) as scope:  # type: ignore[arg-type]
            async with self._slots:
                if self._reason is not None:
                    raise self.lost()
                framed = self._session.open_request(frame)
                waiter = _Waiter()
                self._waiters[framed.id] = waiter
                try:
                    await self._enqueue(self._encode(framed), waiter)
                    if on_queued is not None:
                        on_queued()
                    await waiter.event.wait()
                finally:
                    del self._waiters[framed.id]
                    self._session.give_up(framed.id)
        if scope.cancelled_caught:
            sent = waiter is not None and waiter.sent
            raise RequestTimeout(f"no answer from {self.url} to {frame.TYPE} within {limit:g}s",
                                 sent=sent)
        assert waiter is not None
        if waiter.answer is None:
            raise self.lost(sent=waiter.sent)
        return waiter.answer

    async def send(self, frame: Frame, *, stream: bool = False) -> int:
        """Queue a frame that gets no answer: ``ack`` (its id, 0, is kept) or, with
        ``stream``, a request that opens a stream (``sync``: a new id; an ``error``
        with it comes on :attr:`pushes`). Waits while the writer's queue is full.

        Returns:
            The frame's id.

        Raises:
            ConnectionLost: the link has ended.
            FrameTooLarge: above :attr:`max_send`.
        """
        if stream:
            if self._reason is not None:
                raise self.lost()
            frame = self._session.open_stream(frame)
        await self._enqueue(self._encode(frame), None)
        return frame.id

    def send_nowait(self, frame: Frame) -> None:
        """Queue a frame that gets no answer (``ack``) without waiting (fire and forget).

        Raises:
            trio.WouldBlock: the writer's queue is full (nothing was queued).
            ConnectionLost: the link has ended.
            FrameTooLarge: above :attr:`max_send`.
        """
        try:
            self._out_send.send_nowait((self._encode(frame), None))
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            raise self.lost() from None

    # ----------------------------------------------------------------- tasks

    async def _read(self) -> None:
        reason = None
        try:
            while True:
                try:
                    data = await self._sock.ws.get_message()
                except ConnectionClosed as exc:
                    reason = closed_text(self.url, exc.reason)
                    if self._reason is None and exc.reason is not None:
                        self.close_code = exc.reason.code
                    return
                try:
                    frame = read_frame(data, self.limits)
                except RemoteProtocolError as exc:
                    if self.settings.strict:
                        await self._abort(f"connection to {self.url} closed: invalid frame: {exc}")
                        return
                    log.warning("ignoring an invalid frame from %s: %s", self.url, exc)
                    continue
                kind = self._session.receive(frame, trio.current_time())
                if self.settings.raw and kind is not Incoming.PING:
                    kind = Incoming.PUSH
                if kind is Incoming.ANSWER:
                    waiter = self._waiters.get(frame.id)
                    if waiter is not None:
                        waiter.answer = frame
                        waiter.event.set()
                elif kind is Incoming.PUSH:
                    await self._push(frame)
                elif kind is Incoming.PING:
                    self._try_send(Session.pong(frame))
                elif kind is Incoming.LATE:
                    log.debug("dropping a late %s (id %d) from %s", frame.TYPE, frame.id, self.url)
        finally:
            self._shutdown(reason or f"connection to {self.url} closed")

    async def _push(self, frame: Frame) -> None:
        if self.intercept is not None and self.intercept(frame):
            return
        if self.settings.push_buffer == 0:
            log.debug("dropping an unexpected %s from %s", frame.TYPE, self.url)
            return
        try:
            self._push_send.send_nowait(frame)
            return
        except trio.WouldBlock:
            pass
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            return  # we are shutting down, or nobody reads pushes any more
        keepalive = self._session.keepalive
        keepalive.stall()  # the consumer is slow: the silence that follows is ours
        try:
            await self._push_send.send(frame)
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            return
        finally:
            keepalive.resume(trio.current_time())

    def _try_send(self, frame: Frame) -> None:
        try:
            self.send_nowait(frame)
        except (trio.WouldBlock, ConnectionLost):
            log.debug("could not queue a %s to %s", frame.TYPE, self.url)

    async def _write(self) -> None:
        try:
            async with self._out_recv:
                async for data, waiter in self._out_recv:
                    if waiter is not None:
                        waiter.sent = True
                    try:
                        await self._sock.ws.send_message(data)
                    except ConnectionClosed:
                        return  # the reader sees the close and says why
        finally:
            self._writer_done.set()

    async def _keep_alive(self) -> None:
        cfg = self.settings.keepalive
        while True:
            action = self._session.poll_keepalive(trio.current_time())
            if action is KeepaliveAction.PING:
                self._try_send(self._session.ping())
            elif action is KeepaliveAction.DEAD:
                await self._abort(f"connection to {self.url} lost: no answer within "
                                  f"{cfg.timeout:g}s to a keepalive ping (nothing received "
                                  f"for {cfg.deadline:g}s)")
                return
            await trio.sleep_until(self._session.next_keepalive(trio.current_time()))

    def _shutdown(self, reason: str) -> None:
        """End the link (the first reason wins): fail waiting requests, end the push
        channel, let the writer flush what is queued and stop."""
        if self._reason is not None:
            return
        self._reason = reason
        self._session.close()
        for waiter in self._waiters.values():
            waiter.event.set()  # no answer: ConnectionLost
        self._push_send.close()
        self._out_send.close()
        self._closed.set()

    async def _abort(self, reason: str) -> None:
        """End the link for ``reason`` and drop the stream without a closing handshake."""
        self._shutdown(reason)
        self._aborted = True
        await self._sock.abort()

    async def aclose(self, code: int = 1000, reason: str | None = None) -> None:
        """Close the link: queued frames are written, then the closing handshake runs
        with ``code`` (RFC 6455 section 7.4; 1001 when a node stops) and ``reason``, for
        at most ``CLOSE_TIMEOUT`` seconds (shielded if ``settings.shield_close``).
        Waiting requests fail with :class:`ConnectionLost`. Idempotent: the first
        call's code and reason are the ones sent, and a later call returns once the
        first one is done (so :func:`open_link`'s exit never drops the stream while a
        :meth:`aclose` elsewhere, e.g. a stopping node's, waits for the peer's Close;
        fault-suite finding 14)."""
        if self._close_with is None:
            self._close_with = (code, reason)
        code, reason = self._close_with
        self._shutdown(f"connection to {self.url} closed")
        if self._aborted:
            return
        if self._closing is not None:
            with trio.move_on_after(CLOSE_TIMEOUT, shield=self.settings.shield_close):
                await self._closing.wait()
            return
        self._closing = trio.Event()
        try:
            with trio.move_on_after(CLOSE_TIMEOUT, shield=self.settings.shield_close):
                await self._writer_done.wait()
                await self._sock.ws.aclose(code, reason)
        finally:
            self._closing.set()


@asynccontextmanager
async def open_link(
    url: str, *, settings: LinkSettings = DEFAULT_SETTINGS, limits: Limits = DEFAULT_LIMITS,
    local_address: str | None = None,
) -> AsyncIterator[Link]:
    """Connect to ``url`` and yield a running :class:`Link` (nothing sent yet: see
    :mod:`relay.net.client` for the handshakes). On exit the link is closed
    (:meth:`Link.aclose`) and its socket and stream too, in every case.

    A single exception from the body is raised as itself (not in an exception group).

    Args:
        url: ``ws://host:port`` or ``wss://...``.
        settings: see :class:`LinkSettings`.
        limits: decoding limits for received frames.
        local_address: the local IP address to connect from.

    Raises:
        ConnectFailed: see :func:`relay.net.websocket.open_websocket`.
    """
    with unwrap_single():
        async with open_websocket(
            url, connect_timeout=settings.connect_timeout,
            max_message_size=settings.max_message, message_queue_size=settings.message_queue,
            receive_buffer_size=settings.receive_buffer, shield_close=settings.shield_close,
            local_address=local_address,
        ) as sock:
            async with trio.open_nursery() as nursery:
                link = Link(sock, url, settings, limits)
                nursery.start_soon(link._read)
                nursery.start_soon(link._write)
                nursery.start_soon(link._keep_alive)
                try:
                    yield link
                finally:
                    await link.aclose()
                    nursery.cancel_scope.cancel()
