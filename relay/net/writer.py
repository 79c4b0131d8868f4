"""The write side of one node connection: a bounded queue of encoded frames and the one
task that writes them, several per socket write.

Everything a connection sends (answers, pushes, its close) goes through
:class:`FrameWriter`. The hot paths (:meth:`FrameWriter.send_many`, the node's
answers to a run of requests, and :meth:`FrameWriter.send` with ``direct=True``,
its ``deliver`` frames) write from the caller's task when nothing is queued or being
written (on a plain TCP stream with room in the send buffer, without a single
yield: :meth:`relay.net.wsio.GatedWebSocket.send_messages`), so an answer costs no
wake-up of the writer task; otherwise they queue as before and order is kept. Once the connection has ended, whatever is still queued
or sent is dropped with a debug line: an ended connection never raises into the
code that answers or pushes (a device or peer that closed while a push, an
answer or a close was on its way is no error).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import trio
from trio_websocket import ConnectionClosed, WebSocketConnection

from relay.net.wsio import GatedWebSocket

QUEUE_SIZE = 256  # frames queued for the writer
QUEUE_BYTES = 4 * 1024 * 1024
"""Bytes of frames queued and not yet written after which senders wait (a push is
refused): with :data:`QUEUE_SIZE`, this bounds a connection's write-side memory
whatever its frames' sizes. One frame is always let into an empty queue."""
WRITE_BATCH = 64  # most frames written with one socket write
WRITE_BYTES = 256 * 1024
"""Bytes after which a socket write takes no further frame (so each write is short
enough that its completion is a sign of progress: :attr:`FrameWriter.writing_since`)."""
CLOSE_TIMEOUT = 5.0

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class _Close:
    code: int
    reason: str


@dataclass(frozen=True, slots=True)
class _Tracked:
    data: bytes
    on_written: Callable[[], None]


@dataclass(frozen=True, slots=True)
class _Owed:
    """Queued after a :meth:`FrameWriter.write_nowait` the socket took only in part:
    the writer writes the owed ``size`` bytes (before anything queued after it), then
    calls ``on_written``."""
    size: int
    on_written: Callable[[], None] | None


def _data(item: bytes | _Tracked | _Owed) -> bytes:
    if isinstance(item, _Owed):
        return b""  # the bytes are the WebSocket's owed tail, written before any frame
    return item.data if isinstance(item, _Tracked) else item


class FrameWriter:
    """Queue of encoded frames for one WebSocket and the task writing them (:meth:`run`).

    Args:
        ws: the connection's WebSocket.
        remote: ``host:port`` of the other end, for debug lines.
        on_progress: called after every write (the close gate waits on it).
        on_remote_close: ``on_remote_close(reason)`` when a write finds the
            connection closed by the other end.
        max_bytes: the byte bound of the queue (:data:`QUEUE_BYTES`).

    Attributes:
        unwritten: frames queued and not written yet.
        unwritten_bytes: their bytes.
        done: set once the writer task has ended (closed, or the connection ended).
        writing_since: ``trio.current_time()`` when the socket write in progress
            began, ``None`` between writes: a write that stays unfinished means the
            other end reads nothing (its receive window is shut).
    """

    def __init__(self, ws: WebSocketConnection, remote: str, *,
                 on_progress: Callable[[], None], on_remote_close: Callable[[str], None],
                 on_written: Callable[[list[bytes]], None] = lambda batch: None,
                 max_bytes: int = QUEUE_BYTES) -> None:
        self._ws = ws
        self._on_written = on_written
        self._remote = remote
        self._on_progress = on_progress
        self._on_remote_close = on_remote_close
        self._send, self._recv = trio.open_memory_channel[bytes | _Tracked | _Owed | _Close](QUEUE_SIZE)
        self.unwritten = 0
        self.unwritten_bytes = 0
        self._max_bytes = max_bytes
        self._drained = trio.Event()  # set (and replaced) after each write
        self.done = trio.Event()
        self.writing_since: float | None = None
        self._direct = isinstance(ws, GatedWebSocket)
        #: :meth:`write_nowait` can write (a plain TCP stream; under TLS it never does).
        self.writes_nowait = self._direct and ws._plain_socket() is not None  # type: ignore[union-attr]
        self._closing = False  # a close was queued: nothing is written past it

    def _idle(self) -> bool:
        """Whether a frame may be written from the caller's task now: nothing queued,
        nothing being written, no close queued."""
        return (self._direct and not self.unwritten and self.writing_since is None
                and not self._closing and not self.done.is_set())

    async def _write_now(self, datas: list[bytes],
                         on_written: Callable[[], None] | None = None) -> None:
        """Write ``datas`` from the caller's task (see the module docstring)."""
        n = sum(map(len, datas))
        self._count(n, len(datas))
        self.writing_since = trio.current_time()
        try:
            await self._write(datas)
        except ConnectionClosed as exc:
            reason = exc.reason.code if exc.reason is not None else "?"
            self._on_remote_close(f"closed by the remote ({reason})")
            self._send.close()  # the writer task ends; later frames are dropped
            return
        finally:
            self.writing_since = None
            self._count(-n, -len(datas))
            self._drained.set()
            self._drained = trio.Event()
            self._on_progress()
        if on_written is not None:
            on_written()

    def _fits(self, n: int) -> bool:
        return not self.unwritten_bytes or self.unwritten_bytes + n <= self._max_bytes

    def _count(self, n: int, frames: int = 1) -> None:
        self.unwritten += frames
        self.unwritten_bytes += n

    def write_nowait(self, datas: list[bytes],
                     on_written: Callable[[], None] | None = None) -> bool:
        """Write frames now, without yielding, when the queue is idle (nothing queued or
        being written, no close queued): callable outside any task, e.g. from a commit's
        hand-back on the event loop. ``False``: nothing was written (not idle, not a
        plain-TCP :class:`~relay.net.wsio.GatedWebSocket`, or the socket takes nothing
        now); the caller sends them another way. ``True``: written, or the socket took
        a part and the writer task writes the rest before any later frame
        (:meth:`relay.net.wsio.GatedWebSocket.send_nowait`); ``on_written()`` is called
        once everything was written. Frames the writer task would not take in one
        write (more than :data:`WRITE_BATCH`, or more than one frame and above
        :data:`WRITE_BYTES`) are refused too: an owed tail stays within a socket write's
        bound (the queue's byte bound and :attr:`writing_since`'s sign of progress)."""
        if (not self._idle() or not datas or len(datas) > WRITE_BATCH
                or (len(datas) > 1 and sum(map(len, datas)) > WRITE_BYTES)):
            return False
        left = self._ws.send_nowait(datas)  # type: ignore[attr-defined]
        if left is None:
            return False
        self._on_written(datas)
        if not left:
            self._on_progress()
            if on_written is not None:
                on_written()
            return True
        try:
            self._send.send_nowait(_Owed(left, on_written))  # the queue was empty: room
        except (trio.WouldBlock, trio.ClosedResourceError, trio.BrokenResourceError):
            log.debug("connection %s ended: %d owed bytes dropped", self._remote, left)
            return True
        self._count(left)
        return True

    def push_nowait(self, data: bytes) -> bool:
        """Queue a frame without blocking; ``False`` if the queue is full (frames or
        bytes) or the connection has ended."""
        if not self._fits(len(data)):
            return False
        try:
            self._send.send_nowait(data)
        except (trio.WouldBlock, trio.ClosedResourceError, trio.BrokenResourceError):
            return False
        self._count(len(data))
        return True

    async def send(self, data: bytes, on_written: Callable[[], None] | None = None, *,
                   direct: bool = False) -> None:
        """Queue a frame (waits while the queue is full, in frames or bytes:
        backpressure); ``on_written()`` is called once it has been written to the
        socket (never if it is dropped). ``direct``: write it from this task when the
        queue is idle (only for tasks of the connection itself: a task cancelled
        in the middle of a write would cut the stream)."""
        if direct and self._idle():
            await self._write_now([data], on_written)
            return
        while not self._fits(len(data)) and not self.done.is_set():
            await self._drained.wait()
        self._count(len(data))
        try:
            await self._send.send(data if on_written is None else _Tracked(data, on_written))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self._count(-len(data), -1)
            log.debug("connection %s ended: a frame of %d bytes was dropped", self._remote,
                      len(data))

    async def send_many(self, frames: list[bytes]) -> None:
        """Queue frames without yielding in between while there is room, so the
        writer takes them all at its next wakeup (one socket write); when the queue
        is idle, write them from this task instead (only for tasks of the connection
        itself, as :meth:`send` with ``direct``)."""
        if frames and self._idle() and len(frames) <= WRITE_BATCH:
            await self._write_now(frames)
            return
        for data in frames:
            if not self._fits(len(data)):
                await self.send(data)
                continue
            try:
                self._send.send_nowait(data)
            except trio.WouldBlock:
                await self.send(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                log.debug("connection %s ended: %d frames dropped", self._remote, len(frames))
                return
            else:
                self._count(len(data))

    def close_nowait(self, code: int, reason: str) -> bool:
        """Queue the close after what is queued; ``False`` if that cannot be done now."""
        try:
            self._send.send_nowait(_Close(code, reason))
        except (trio.WouldBlock, trio.ClosedResourceError, trio.BrokenResourceError):
            return False
        self._closing = True
        return True

    async def close(self, code: int, reason: str) -> None:
        """Queue the close after what is queued and wait (at most ``CLOSE_TIMEOUT``
        seconds) until the writer has written everything and closed."""
        self._closing = True
        try:
            await self._send.send(_Close(code, reason))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            log.debug("connection %s already ended: close %d dropped", self._remote, code)
        with trio.move_on_after(CLOSE_TIMEOUT):
            await self.done.wait()

    async def run(self, cancel: trio.CancelScope) -> None:
        """Write queued frames until a close was written (then cancel ``cancel``: the
        connection is over) or the connection ended."""
        try:
            async with self._recv:
                async for item in self._recv:
                    batch = [item]
                    size = 0 if isinstance(item, _Close) else len(_data(item))
                    owed = item.size if isinstance(item, _Owed) else 0
                    while (len(batch) < WRITE_BATCH and size < WRITE_BYTES
                           and not isinstance(batch[-1], _Close)):
                        try:
                            batch.append(self._recv.receive_nowait())
                        except (trio.WouldBlock, trio.EndOfChannel):
                            break
                        if isinstance(batch[-1], _Owed):
                            owed += batch[-1].size  # type: ignore[union-attr]
                        elif not isinstance(batch[-1], _Close):
                            size += len(_data(batch[-1]))  # type: ignore[arg-type]
                    close = batch.pop() if isinstance(batch[-1], _Close) else None
                    try:
                        if batch:
                            self.writing_since = trio.current_time()
                            datas = [_data(i) for i in batch  # type: ignore[arg-type]
                                     if not isinstance(i, _Owed)]
                            if datas:
                                await self._write(datas)  # an owed tail goes first
                            else:
                                await self._ws.flush_owed()  # type: ignore[attr-defined]
                            self.writing_since = None
                            self._count(-sum(map(len, datas)) - owed, -len(batch))
                            self._drained.set()
                            self._drained = trio.Event()
                            for i in batch:
                                if isinstance(i, _Tracked | _Owed) and i.on_written is not None:
                                    i.on_written()
                        if close is not None:
                            with trio.move_on_after(CLOSE_TIMEOUT):
                                await self._ws.aclose(close.code, close.reason)
                            cancel.cancel()
                            return
                    except ConnectionClosed as exc:
                        reason = exc.reason.code if exc.reason is not None else "?"
                        self._on_remote_close(f"closed by the remote ({reason})")
                        return
                    finally:
                        self._on_progress()
        finally:
            self.done.set()
            self._drained.set()  # senders waiting for room: the connection has ended

    async def _write(self, batch: list[bytes]) -> None:
        if isinstance(self._ws, GatedWebSocket):
            await self._ws.send_messages(batch)
        else:
            for data in batch:
                await self._ws.send_message(data)
        self._on_written(batch)
