"""The accepting side of the one connection layer: an accepted WebSocket (a device, a
linking device or a peer node) driven by the sans-I/O
:class:`~relay.protocol.connection.ServerConnection`.

An :class:`AcceptedLink` owns the connection's mechanics; what each request *means*
belongs to its :class:`Dispatcher` (the node's, :mod:`relay.serving.server`). Tasks
of one link, all in one nursery:

* the **reader** always drains the WebSocket: it decodes and admits each message at
  once (``ServerConnection.receive_data``; while nothing is buffered, right in
  trio-websocket's reader task through :attr:`~relay.net.wsio.GatedWebSocket.message_hook`,
  without waking a task of ours), hands an ``ack`` to
  :meth:`Dispatcher.on_ack` on the spot and queues every other request (or its
  refusal, in reading order); it reads ahead at most ``window`` unanswered requests
  (announced in ``challenge``) and :attr:`AcceptSettings.read_ahead_bytes`, then
  waits (backpressure);
* the **handler** (:meth:`AcceptedLink.run`) takes *every* queued request at each
  wakeup: a run of requests that must be served in order goes to
  :meth:`Dispatcher.serve` in one call (so it can batch them); a request the
  dispatcher calls concurrent (:meth:`Dispatcher.concurrent`, a peer's lookups) runs
  in a task of its own (at most :attr:`AcceptSettings.concurrency` at a time) and
  is answered by id, possibly out of order; a refusal is answered in its place,
  closing the link when it carries a close code;
* the **writer** (:class:`relay.net.writer.FrameWriter`) is the only task that
  writes: every queued frame, several per socket write;
* the **keepalive** pings (WebSocket ping) after ``keepalive_interval`` seconds of
  silence and ends the link without a pong within ``keepalive_timeout``, or when a
  socket write makes no progress for both together;
* the **handshake deadline**: a connection that has not called
  :meth:`AcceptedLink.authenticated` within ``handshake_timeout`` seconds (extended
  by :meth:`AcceptedLink.linking_deadline`) gets ``error unauthorized`` (id 0) and
  close 1008.

A remote Close waits until every request read before it has been answered and
written and the dispatcher has settled (:mod:`relay.net.wsio`); a request read
before the link closes is answered (or refused) before the Close. An answer, push or
close for a link that has already ended is dropped with a debug line. Any other
exception is a bug: logged (metadata only), answered with ``error internal`` and
close 1011 (the per-connection boundary); the node keeps serving the others.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Protocol

import trio
from trio_websocket import ConnectionClosed, WebSocketConnection

from relay.protocol import CloseCode, ErrorCode, RemoteProtocolError, write_frame
from relay.protocol.connection import ConnState, ServerConnection
from relay.protocol.frames import Ack, Error, Frame

from .admission import HandshakeDeadline, Ticket
from .writer import CLOSE_TIMEOUT, FrameWriter
from .wsio import GatedWebSocket

__all__ = ["CLOSE_TIMEOUT", "PEER_CONCURRENCY", "READ_AHEAD_BYTES", "AcceptSettings",
           "AcceptedLink", "Dispatcher", "LinkMetrics"]

READ_AHEAD_BYTES = 8 * 1024 * 1024
"""Bytes of read but unserved requests after which the reader waits (with the window,
this bounds a connection's read-ahead memory whatever its frames' sizes)."""
PEER_CONCURRENCY = 64


@dataclass(frozen=True, slots=True)
class AcceptSettings:
    """Timing and bounds of accepted links (seconds; ``keepalive_interval`` 0: none)."""

    handshake_timeout: float
    keepalive_interval: float
    keepalive_timeout: float
    read_ahead_bytes: int = READ_AHEAD_BYTES
    concurrency: int = PEER_CONCURRENCY


class Dispatcher(Protocol):
    """What an :class:`AcceptedLink` hands requests to (one per link)."""

    def on_ack(self, seq: int) -> None:
        """An ``ack`` was read: apply it now (it has no answer). Must not block."""

    def concurrent(self, frame: Frame) -> bool:
        """Whether ``frame`` may be served in a task of its own, answered out of order."""

    async def serve(self, frames: list[Frame]) -> None:
        """Serve ``frames`` (admitted requests) in order, answering each with
        :meth:`AcceptedLink.send` / :meth:`AcceptedLink.send_many` by its id. May
        close the link (:meth:`AcceptedLink.close`). Raises only for a bug."""

    async def settled(self) -> None:
        """Return once what the dispatcher applies in the background for requests
        already read (e.g. coalesced acks) is applied."""


class LinkMetrics(Protocol):
    """Counters of the messages a link reads and writes."""

    def read(self, message: bytes | str) -> None:
        """One message was read."""

    def written(self, batch: list[bytes]) -> None:
        """Messages were written with one socket write."""


@dataclass(frozen=True, slots=True)
class _Refusal:
    """A message that could not be admitted: its error answer, in reading order."""

    error: Error
    close_code: int | None
    code: str


class AcceptedLink:
    """One accepted WebSocket. Attach a :class:`Dispatcher` (:meth:`attach`), then
    :meth:`run` it.

    Args:
        ws: the accepted WebSocket (a :class:`~relay.net.wsio.GatedWebSocket` for the
            close gate, batched writes and reads without a task switch).
        remote: ``host:port`` of the other end (for log lines).
        conn: the connection's sans-I/O state machine (its limits decode what is read).
        settings: see :class:`AcceptSettings`.
        ticket: its admission ticket (marked authenticated by :meth:`authenticated`).
        log: for metadata-only log lines.
        metrics: counts what is read and written.

    Attributes:
        conn: the :class:`ServerConnection`.
        address: the remote address's admission key (:func:`~relay.net.admission.address_key`).
        exits: closed when the link ends (the dispatcher enters registrations here).
        nursery: the link's nursery while it runs (for the dispatcher's tasks).
    """

    def __init__(self, ws: WebSocketConnection, remote: str, conn: ServerConnection,
                 settings: AcceptSettings, *, ticket: Ticket, log: logging.Logger,
                 metrics: LinkMetrics) -> None:
        self.conn = conn
        self.remote = remote
        self.address = ticket.key
        self.exits = ExitStack()
        self.nursery: trio.Nursery | None = None
        self._ws = ws
        self._settings = settings
        self._ticket = ticket
        self._log = log
        self._metrics = metrics
        self._dispatcher: Dispatcher | None = None
        self._deadline = HandshakeDeadline(settings.handshake_timeout)
        self._requests: deque[Frame | _Refusal] = deque()
        self._queued_bytes = 0
        self._more = trio.Event()  # the reader queued something (or ended)
        self._room = trio.Event()  # the handler took the queue
        self._reading = True
        self._bug: Exception | None = None  # raised in trio-websocket's task by _direct
        self._busy = False
        self._tasks = 0
        self._slots = trio.Semaphore(settings.concurrency)
        self._progress = trio.Event()
        self._settling = 0  # close gates waiting on _progress
        self._out = FrameWriter(ws, remote, on_progress=self._signal, on_remote_close=self.end,
                                on_written=metrics.written)
        self._cancel = trio.CancelScope()
        self._started = trio.current_time()
        self._last_rx = self._started  # when the reader last took a message
        self._ended: str | None = None  # why the link ends (the first reason wins)
        if isinstance(ws, GatedWebSocket):
            ws.close_gate = self._settle
            ws.message_hook = self._direct
        ticket.on_evict = self._evicted

    def attach(self, dispatcher: Dispatcher) -> None:
        """Set the dispatcher (before :meth:`run`)."""
        self._dispatcher = dispatcher

    # ----------------------------------------------------------------- for the dispatcher

    def who(self) -> str:
        """``device XXXXXXXX/N``, ``peer ID`` or ``unauthenticated`` (for log lines)."""
        if self.conn.state is ConnState.CLIENT:
            return f"device {self.conn.user_id[:8]}/{self.conn.device_id}"  # type: ignore[index]
        if self.conn.state is ConnState.PEER:
            return f"peer {self.conn.peer_id}"
        return "unauthenticated"

    def authenticated(self) -> None:
        """The handshake is done: no deadline any more; no longer pending in admission."""
        self._deadline.done()
        self._ticket.authenticated()

    def linking_deadline(self, seconds: float) -> None:
        """A linking device opened its mailbox: the connection may live ``seconds`` from
        now (the mailbox's lifetime plus time to hear that it expired), set once and
        never renewed by a later ``link_open``; it no longer counts as pending in the
        admission (it is bounded per address by its mailboxes)."""
        self._deadline.linking(seconds)
        self._ticket.authenticated()

    def end(self, reason: str) -> None:
        """Record why the link ends (the first reason wins; logged at the end)."""
        if self._ended is None:
            self._ended = reason

    def _evicted(self) -> None:
        """The admission evicted this unauthenticated connection for a newer one."""
        self.end(f"closed {CloseCode.POLICY_VIOLATION:d} evicted: not authenticated")
        if not self._out.close_nowait(CloseCode.POLICY_VIOLATION, "not authenticated"):
            self._cancel.cancel()

    def cancel(self, reason: str) -> None:
        """End the link now (``reason`` as for :meth:`end`), dropping what is queued."""
        self.end(reason)
        self._cancel.cancel()

    def push_nowait(self, frame: Frame) -> bool:
        """Queue a push without blocking; ``False`` if saturated or the link has ended."""
        return self._out.push_nowait(write_frame(frame))

    async def send(self, frame: Frame) -> None:
        """Queue a frame (waits while the write queue is full); dropped quietly once
        the link has ended."""
        await self._out.send(write_frame(frame))

    async def send_data(self, data: bytes, on_written: Callable[[], None] | None = None) -> None:
        """Queue an encoded frame; ``on_written()`` once it was written to the socket.
        Only for tasks of this link (the frame may be written from the calling task:
        :meth:`relay.net.writer.FrameWriter.send` with ``direct``)."""
        await self._out.send(data, on_written, direct=True)

    def fail(self, exc: Exception) -> None:
        """A bug found outside the link's tasks (e.g. in a commit's hand-back): the
        handler re-raises it at the per-connection boundary (logged, ``error internal``,
        close 1011); nothing more is served."""
        if self._bug is None:
            self._bug = exc
        self._more.set()

    @property
    def writes_nowait(self) -> bool:
        """Whether :meth:`send_data_nowait` can ever write (plain TCP, not TLS)."""
        return self._out.writes_nowait

    def send_data_nowait(self, datas: list[bytes],
                         on_written: Callable[[], None] | None = None) -> bool:
        """Write encoded frames now if the writer is idle, without yielding (callable
        outside a task); ``False``: nothing written, send them another way
        (:meth:`relay.net.writer.FrameWriter.write_nowait`); also once the link was
        cancelled (:meth:`cancel`) or failed (:meth:`fail`): it is ending, its tasks may
        not have unwound yet, and nothing more is written for it."""
        if self._cancel.cancel_called or self._bug is not None:
            return False
        return self._out.write_nowait(datas, on_written)

    async def send_many(self, frames: list[Frame]) -> None:
        """Queue frames so that the writer takes them together (one socket write), or
        write them from the calling task when nothing is queued; only for tasks of
        this link (:meth:`relay.net.writer.FrameWriter.send_many`)."""
        await self._out.send_many([write_frame(f) for f in frames])

    def close_nowait(self, code: int, reason: str) -> bool:
        """Queue the close after what is queued; ``False`` if that cannot be done now."""
        return self._out.close_nowait(code, reason)

    def close_after_read(self, frame: Error, code: int, reason: str) -> None:
        """Serve what was read so far, then send ``frame`` and close with ``code``
        (e.g. ``error moved`` and 1001 when a reshape moves the user's home); what is
        read afterwards is not served."""
        self._requests.append(_Refusal(frame, code, reason))
        self._more.set()
        self._signal()

    async def close(self, code: int, reason: str) -> None:
        """Flush queued frames, close with ``code`` and end the link."""
        self.end(f"closed {code} {reason}".rstrip())
        await self._out.close(code, reason)
        self._cancel.cancel()

    # ----------------------------------------------------------------- running

    async def run(self) -> None:
        """Serve the link until it closes, then log one info line saying why.
        Never raises (except Cancelled)."""
        assert self._dispatcher is not None, "attach() a dispatcher first"
        try:
            with self.exits, self._cancel:
                async with trio.open_nursery() as nursery:
                    self.nursery = nursery
                    nursery.start_soon(self._reader)
                    nursery.start_soon(self._out.run, self._cancel)
                    nursery.start_soon(self._handshake_deadline)
                    nursery.start_soon(self._keepalive)
                    await self._handle_all(self._dispatcher)
                    with trio.move_on_after(CLOSE_TIMEOUT):  # e.g. acks read before the end
                        await self._dispatcher.settled()
                    await self.close(CloseCode.NORMAL, "")
        except Exception:  # noqa: BLE001 - the per-connection boundary: log, internal, close 1011
            self._log.exception("connection %s (%s): unexpected error", self.remote, self.who())
            self._ended = f"closed {CloseCode.INTERNAL_ERROR:d} internal error"
            with trio.move_on_after(1):
                try:
                    await self._ws.send_message(write_frame(Error(id=0, code="internal")))
                    await self._ws.aclose(CloseCode.INTERNAL_ERROR, "internal error")
                except ConnectionClosed:
                    pass
        self._log.info("connection %s (%s) ended after %.1f s: %s", self.remote, self.who(),
                       trio.current_time() - self._started, self._ended or "closed")

    def _signal(self) -> None:
        if self._settling:  # only the close gate waits on progress: no event churn otherwise
            self._progress.set()
            self._progress = trio.Event()

    async def _handshake_deadline(self) -> None:
        if not await self._deadline.wait():
            return
        limit = self._settings.handshake_timeout
        self.end(f"closed {CloseCode.POLICY_VIOLATION:d} no authentication within {limit:g} s")
        await self.send(Error(id=0, code=ErrorCode.UNAUTHORIZED.value,
                              message=f"authenticate within {limit:g} s of connecting"))
        await self.close(CloseCode.POLICY_VIOLATION, "handshake timeout")

    async def _keepalive(self) -> None:
        """Notice a dead link (issue 15, "Dead links noticed"): after
        ``keepalive_interval`` s with no message from the other end, send a WebSocket
        ping (RFC 6455 5.5.2; every wa-relay end keeps a reader draining its socket,
        so trio-websocket answers it); no pong within ``keepalive_timeout`` s (or a
        send buffer that stays full for that long) ends the link, which frees the
        device's registration and its in-flight window. A socket write that has not
        finished after ``keepalive_interval + keepalive_timeout`` s ends the link too,
        whatever arrives meanwhile: the other end reads nothing (a device that never
        reads but keeps sending ``ack`` frames would otherwise pin the frames queued
        for it forever)."""
        interval, timeout = self._settings.keepalive_interval, self._settings.keepalive_timeout
        if interval <= 0:
            return
        stall_limit = interval + timeout
        while True:
            now = trio.current_time()
            writing = self._out.writing_since
            if writing is not None and now - writing >= stall_limit:
                self._log.debug("connection %s (%s): writes stalled", self.remote, self.who())
                self.cancel(f"no write progress for {stall_limit:g} s (the remote reads nothing)")
                return
            idle = now - self._last_rx
            if idle < interval:
                wait = interval - idle
                if writing is not None:
                    wait = min(wait, writing + stall_limit - now)
                await trio.sleep(wait)
                continue
            with trio.move_on_after(timeout) as waited:
                try:
                    await self._ws.ping()
                except (ConnectionClosed, trio.BrokenResourceError, trio.ClosedResourceError):
                    return  # ended anyway; the reader tells why
            if not waited.cancelled_caught:
                self._last_rx = max(self._last_rx, trio.current_time())
                continue
            self._log.debug("connection %s (%s): keepalive timed out", self.remote, self.who())
            self.cancel(f"no answer to a keepalive ping within {timeout:g} s")
            return

    # ----------------------------------------------------------------- reading

    async def _reader(self) -> None:
        try:
            while True:
                try:
                    message = await self._ws.get_message()
                except ConnectionClosed as exc:
                    reason = exc.reason.code if exc.reason is not None else "?"
                    self.end(f"closed by the remote ({reason})")
                    return
                self._last_rx = trio.current_time()
                self._take(message)
                if isinstance(self._ws, GatedWebSocket):  # what is buffered, without yielding
                    while len(self._requests) < self.conn.window:
                        more = self._ws.get_message_nowait()
                        if more is None:
                            break
                        self._take(more)
                while (len(self._requests) >= self.conn.window
                       or self._queued_bytes >= self._settings.read_ahead_bytes):
                    self._room = trio.Event()
                    await self._room.wait()
        finally:
            self._reading = False
            self._more.set()
            self._signal()

    def _direct(self, message: bytes | str) -> bool:
        """trio-websocket's reader hands over a message while none is buffered: take it
        now if the read-ahead bounds allow (``False``: it is buffered for the reader)."""
        if (self.nursery is None or not self._reading or self._bug is not None
                or len(self._requests) >= self.conn.window
                or self._queued_bytes >= self._settings.read_ahead_bytes):
            return False
        self._last_rx = trio.current_time()
        try:
            self._take(message)
        except Exception as exc:  # noqa: BLE001 - a bug: re-raised by the handler, at the boundary
            self._bug = exc
            self._more.set()
        return True

    def _take(self, message: bytes | str) -> None:
        """Decode and admit one message; hand an ack over now, queue anything else."""
        self._metrics.read(message)
        try:
            frame = self.conn.receive_data(message)
        except RemoteProtocolError as exc:
            self._requests.append(_Refusal(self.conn.error_frame(exc), exc.close_code,
                                           exc.code.value))
        else:
            if isinstance(frame, Ack):
                assert self._dispatcher is not None
                self._dispatcher.on_ack(frame.seq)
                self._signal()
                return
            self._requests.append(frame)
        self._queued_bytes += len(message)
        self._more.set()
        self._signal()

    # ----------------------------------------------------------------- handling

    async def _handle_all(self, dispatcher: Dispatcher) -> None:
        """Serve queued requests until the reader ended and everything read is answered."""
        async with trio.open_nursery() as tasks:
            while True:
                if self._bug is not None:
                    raise self._bug
                if not self._requests:
                    if not self._reading:
                        return  # the task nursery waits for requests still running
                    self._more = trio.Event()
                    await self._more.wait()
                    continue
                batch = list(self._requests)
                self._requests.clear()
                self._queued_bytes = 0
                self._room.set()
                self._busy = True
                try:
                    if not await self._serve(dispatcher, batch, tasks):
                        return
                finally:
                    self._busy = False
                    self._signal()

    async def _serve(self, dispatcher: Dispatcher, batch: list[Frame | _Refusal],
                     tasks: trio.Nursery) -> bool:
        """Serve ``batch`` in order; ``False`` once the link must close."""
        run: list[Frame] = []
        for item in batch:
            if isinstance(item, _Refusal) or dispatcher.concurrent(item):
                if run:
                    await dispatcher.serve(run)
                    run = []
            if isinstance(item, _Refusal):
                self._log.debug("connection %s: %s (%s)", self.remote, item.code, self.who())
                await self.send(item.error)
                if item.close_code is not None:
                    await self.close(item.close_code, item.code)
                    return False
            elif dispatcher.concurrent(item):
                await self._slots.acquire()
                self._tasks += 1
                tasks.start_soon(self._concurrent, dispatcher, item)
            else:
                run.append(item)
        if run:
            await dispatcher.serve(run)
        return True

    async def _concurrent(self, dispatcher: Dispatcher, frame: Frame) -> None:
        try:
            await dispatcher.serve([frame])
        finally:
            self._slots.release()
            self._tasks -= 1
            self._signal()

    async def _settle(self, buffered: Callable[[], int]) -> None:
        """Close gate (:mod:`relay.net.wsio`): return once every message read has been
        served, every answer written and the dispatcher has settled."""
        while buffered() or self._requests or self._busy or self._tasks or self._out.unwritten:
            if self._out.done.is_set():
                return
            self._settling += 1
            try:
                await self._progress.wait()
            finally:
                self._settling -= 1
        assert self._dispatcher is not None
        await self._dispatcher.settled()
