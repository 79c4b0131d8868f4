"""Group commit: one writer task owns every write to an LMDB environment.

Callers :meth:`GroupCommitWriter.submit` one op, or :meth:`~GroupCommitWriter.submit_many`
a list of ops (a function ``(txn, dbs) -> result`` each, see :mod:`storage._lmdb_ops`),
into a bounded queue and wait for their own results. One **commit thread**, started
by :meth:`GroupCommitWriter.serve` and living as long as it, takes the first
submission, drains whatever else is already queued (up to ``max_batch_ops`` ops or
``max_batch_bytes``), and runs the whole batch in **one** write transaction: the
puts, the commit and its fsync all happen in that thread, never on the event loop,
and no write transaction ever lives across an ``await``. Then it hands the batch
back to the event loop (``TrioToken.run_sync_soon``), which wakes every caller with
the answer of each of its ops. Whatever is submitted while a batch commits forms
the next batch. (A persistent thread fed by a queue costs about half of a
``trio.to_thread.run_sync`` call per batch, and no Trio task sits between the
callers and the thread: docs/benchmarks.md, "Paced latency".)

**Every op gets its own answer.** Ops run in submission order (the ops of one
``submit_many`` stay together and in list order). Each op validates before it
writes, so a domain error (``QueueFull``, ``DuplicateKey``, ``StaleVersion``)
answers that op alone and the others commit. An op that would not fit in the
store is refused by the admission check below before it writes. If LMDB still
fails the transaction (``MapFullError`` at a put or at the commit, ENOSPC, an
I/O error), the transaction is aborted and the batch is split: the ops before the
failing one are committed on their own, the failing op is retried alone, then
the rest; a failure at commit bisects the batch. So one op's failure never
fails the others, and an op alone that still fails gets the translated error:
:class:`~storage.errors.StorageFull` for no room (MapFull, ENOSPC, EDQUOT),
:class:`~storage.errors.StorageUnavailable` for a failing medium (EIO, a
panicked environment, anything else from LMDB). A failure at *commit* that is
not "no room" answers every op of that transaction with ``StorageUnavailable``
at once: the medium is failing, and retrying the ops one by one would only
hammer it. The next batch starts afresh.

**Order across refusals.** An enqueue op may carry chain keys (``op.chain``,
:mod:`storage._chains`): once an op is refused, a later op of the batch sharing
one of its keys (the same ``enqueue_many`` call, sending device and receiving
device) is refused alike without running. Ops are answered in submission order
(splits commit the ops before a failing one first), so only earlier refusals count.

**The map size is a bound.** The map is never grown. Ops that add data are
admitted only while the pages in use stay below ``map_size - reserve``
(:func:`default_reserve`); the reserve is kept for *freeing* ops (acks,
purges, expiry, claims, outbox deletes and retries), which LMDB needs a few free
pages for too (it is copy-on-write). So a full store refuses new data with
``StorageFull`` long before LMDB's own ``MapFullError``, and can always drain.
Each adding op's estimate (an upper bound) is taken from the room left; the pages
in use are read exactly (a stat of every sub-database) when an op might not fit,
after a failed attempt and every ``ROOM_RECHECK`` commits, and in between the
room left is carried from one batch to the next (so a small batch pays no stats).
Pages freed by a commit are reused by later ones; because LMDB keeps the previous
snapshot, pages freed by the last commit become reusable only after one more,
so on a ``MapFullError`` the writer first commits a one-record "bump" and
retries once.

**Stale readers.** A process killed while it had the environment open leaves its
reader slot behind; enough of them fill the reader table (``MDB_READERS_FULL``)
and pin old pages. The writer runs ``env.reader_check()`` in its thread every
``reader_check_interval`` seconds (Trio's clock): before a batch once the
interval has passed (by ``time.monotonic``), and when it has been idle that long.

**The GIL.** The commit thread needs the GIL back when it wakes for a submission,
when the commit's fsync returns, and after any LMDB call around which py-lmdb lets
the GIL go (each put) if the loop took it meanwhile. A busy event loop keeps the
GIL until the interpreter's switch interval (5 ms by default) forces a hand-over,
so without help a busy node adds up to 5 ms per such wait to every batch, the
latency of every durable answer and delivery (in a loaded node the thread waited
about 8 times as long for the GIL as for its fsync: docs/benchmarks.md). While it
may wait (asleep on its queue, in ``begin``, in the commit and fsync) the thread
therefore sets the interval to :data:`HANDOVER_INTERVAL` (1 ms), and back to the
interval found at start while it runs a transaction's ops (mostly Python, when a
short interval would bounce the GIL between the loop and the ops; measured
alike). The interval is one per
process: the first commit thread notes it, the last one to stop puts it back
(``handover_interval=0`` leaves it alone). Why 1 ms and not less: the thread then
also takes the GIL from a loop that is still queueing a burst of submissions, and
batches shrink (1,000 concurrent enqueues took up to 21 transactions at 0.2 ms, at
most 8 at 1 ms, 2-4 at 5 ms). Measured in docs/benchmarks.md, "Session 5: paced
latency".

Ops submitted concurrently may be applied in any order; ops of one task, which
awaits each before the next, are applied in order.

This module is the submission, batching and the commit thread; the transactions
themselves run in :class:`storage._lmdb_commit.Committer`, its base.
"""

from __future__ import annotations

import queue
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import lmdb
import outcome
import trio

from ._lmdb_commit import (
    Committer,
    FaultHook,
    Op,
    PendingOp,
    default_reserve,
    is_full_error,
    translate,
)
from ._lmdb_layout import Dbs

__all__ = ["FaultHook", "GroupCommitWriter", "Op", "default_reserve", "is_full_error", "translate"]


class _Ticket:
    """One submission (one or more ops), the event its caller waits on, and what to
    call on the event loop once its batch committed (before the caller wakes)."""

    __slots__ = ("ops", "size", "done", "after")

    def __init__(self, ops: list[PendingOp], size: int,
                 after: Callable[[list[PendingOp]], None] | None = None) -> None:
        self.ops = ops
        self.size = size
        self.done = trio.Event()
        self.after = after


HANDOVER_INTERVAL = 0.001
"""Seconds: the interpreter's switch interval while a commit thread waits for the GIL
(see "The GIL" in the module docstring)."""


class _SwitchInterval:
    """The interpreter's switch interval (``sys.setswitchinterval``), which is one per
    process, shared by the commit threads of every writer in it: the first to start
    notes the interval in force, the last to stop puts it back."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._users = 0
        self._normal = 0.0

    def enter(self, handover: float) -> tuple[float, float]:
        """A commit thread starts: returns ``(waiting, running)`` intervals for it and
        sets the waiting one."""
        with self._lock:
            if self._users == 0:
                self._normal = sys.getswitchinterval()
            self._users += 1
            waiting = min(handover, self._normal)
            sys.setswitchinterval(waiting)
            return waiting, self._normal

    def exit(self) -> None:
        """A commit thread ends; the last one puts the noted interval back."""
        with self._lock:
            self._users -= 1
            if self._users == 0:
                sys.setswitchinterval(self._normal)


_SWITCH = _SwitchInterval()

_STOP = object()
"""Queued by :meth:`GroupCommitWriter.close` (and when :meth:`~GroupCommitWriter.serve`
is cancelled): the commit thread ends once it takes it."""


class GroupCommitWriter(Committer):
    """The single writer of one environment. Run :meth:`serve` in a nursery.

    Args:
        env, dbs: the open environment and its sub-database handles.
        max_batch_ops: most ops per transaction (one ``submit_many`` is never split
            across batches, so it may exceed this alone).
        max_batch_bytes: a batch stops growing once its ops' payload bytes reach this.
        queue_size: most submissions queued and not yet taken by the commit thread
            (callers wait when it is full).
        limit_bytes: adding ops are refused (``StorageFull``) once the pages in use
            would exceed this; ``None``: ``map_size - default_reserve(map_size)``.
        reader_check_interval: seconds between ``env.reader_check()`` calls.
        handover_interval: seconds, the switch interval while the commit thread waits
            for the GIL (:data:`HANDOVER_INTERVAL`); 0: leave the interpreter's alone.
        fault_hook: test-only, see :data:`FaultHook`.
    """

    def __init__(
        self, env: lmdb.Environment, dbs: Dbs, *, max_batch_ops: int = 1024,
        max_batch_bytes: int = 16 * 1024 * 1024, queue_size: int = 1024,
        limit_bytes: int | None = None, reader_check_interval: float = 10.0,
        handover_interval: float = HANDOVER_INTERVAL, fault_hook: FaultHook | None = None,
    ) -> None:
        super().__init__(env, dbs, limit_bytes=limit_bytes, fault_hook=fault_hook)
        self._handover = handover_interval
        self._max_ops = max_batch_ops
        self._max_bytes = max_batch_bytes
        self._reader_interval = reader_check_interval
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()  # _Ticket or _STOP
        self._queue_size = queue_size
        self._queued = 0  # tickets put and not yet handed back (event loop only)
        self._room = trio.Event()  # set (and replaced) when tickets are handed back
        self._closed = False  # no more submissions (event loop only)
        self._abandon = False  # the thread answers what is left unrun (serve was cancelled)
        self._token: trio.lowlevel.TrioToken | None = None
        self._ended: outcome.Outcome[None] | None = None  # how the commit thread ended
        self.stopped = trio.Event()
        #: Counters for tests and metrics (more in Committer).
        self.batches = 0
        self.ops = 0
        #: Optional observer, called on the event loop after every batch with
        #: ``(ops in the batch, seconds the batch's commit took)``; it must
        #: not raise or block (metrics: :meth:`storage.lmdb.LmdbStorage.observe_batches`).
        self.on_batch: Callable[[int, float], None] | None = None

    # -- callers

    async def submit(self, op: Op, *, size: int = 0, est: int | None = None,
                     freeing: bool = False) -> Any:
        """Run ``op`` in the next batch; return its result or raise its exception.

        Args:
            op: ``(txn, dbs) -> result``; it must raise any domain error before it writes.
            size: payload bytes (for the batch bound).
            est: bytes the op may add to the store (for the admission check);
                default ``2 * size + 256``. Ignored for freeing ops.
            freeing: the op only deletes or rewrites in place: never refused for room.

        Raises:
            trio.ClosedResourceError: the writer is closed or stopped.
            StorageFull, StorageUnavailable, or the op's domain error.

        If the caller is cancelled after the op was queued, the op may still be
        applied (entirely or not at all).
        """
        pending = PendingOp(op, size, 2 * size + 256 if est is None else est, freeing)
        await self._queue_ticket(_Ticket([pending], size))
        if pending.error is not None:
            raise pending.error
        return pending.value

    async def submit_many(
        self, ops: list[tuple[Op, int, int | None, bool]], *,
        after: Callable[[list[PendingOp]], None] | None = None,
    ) -> list[tuple[Any, Exception | None]]:
        """Run ``(op, size, est, freeing)`` tuples (see :meth:`submit`) in list order,
        together in the next batch; return ``(value, error)`` per op, in order.

        Each op is atomic on its own; one op's error never fails another.

        ``after(pending)``, if given, is called on the event loop as soon as the batch
        is handed back, before this call returns (and before any caller of that batch
        resumes), with the ops' :class:`PendingOp` records (``value`` / ``error`` set);
        not called if the ops were never run. It must not raise or block (it runs in
        the hand-back callback): :meth:`storage.lmdb.LmdbStorage.notify_enqueued` wakes
        pushers from there, a scheduler round before the enqueuing task would.

        Raises:
            trio.ClosedResourceError: the writer is closed or stopped.
        """
        if not ops:
            await trio.lowlevel.checkpoint()
            return []
        pending = [PendingOp(fn, size, 2 * size + 256 if est is None else est, freeing)
                   for fn, size, est, freeing in ops]
        await self._queue_ticket(_Ticket(pending, sum(p.size for p in pending), after))
        return [(p.value, p.error) for p in pending]

    async def _queue_ticket(self, ticket: _Ticket) -> None:
        """Queue ``ticket`` for the commit thread and wait until its ops are answered."""
        while self._queued >= self._queue_size and not self._closed:
            await self._room.wait()
        if self._closed:
            await trio.lowlevel.checkpoint()
            raise trio.ClosedResourceError("storage is closed")
        self._queued += 1
        self._queue.put(ticket)  # checked and put without yielding: close() cannot slip between
        await ticket.done.wait()

    def close(self) -> None:
        """Accept no more ops; :meth:`serve` commits what is queued, then returns."""
        if not self._closed:
            self._closed = True
            self._room.set()
            self._queue.put(_STOP)

    # -- the commit thread and its lifetime

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run the commit thread until :meth:`close` and the queue is drained, or until
        cancelled (then the batch being committed completes, what is still queued is
        answered with ``trio.ClosedResourceError``).

        Raises:
            Exception: a bug in the batch runner (ops answer their own errors); the
                batch in progress and everything queued are answered with
                ``trio.ClosedResourceError``.
        """
        self._token = trio.lowlevel.current_trio_token()
        threading.Thread(target=self._thread_main, name="wa-relay lmdb commit",
                         daemon=True).start()
        try:
            task_status.started()
            await self.stopped.wait()
        finally:
            if not self.stopped.is_set():  # cancelled: stop the thread, answer the rest
                self._abandon = True
                self.close()
                with trio.CancelScope(shield=True):
                    await self.stopped.wait()
        if isinstance(self._ended, outcome.Error):
            self._ended.unwrap()

    def _thread_main(self) -> None:
        """The commit thread: take a batch, run it, hand it back; until ``_STOP``."""
        assert self._token is not None
        token = self._token
        if self._handover > 0:
            self._switch = _SWITCH.enter(self._handover)
        try:
            left, ended = self._commit_loop(token)
        finally:
            if self._switch is not None:
                self._switch = None
                _SWITCH.exit()
        token.run_sync_soon(self._thread_ended, left, ended)

    def _commit_loop(self, token: trio.lowlevel.TrioToken
                     ) -> tuple[list[_Ticket], outcome.Outcome[None]]:
        """:meth:`_thread_main`'s loop; returns the tickets left unrun (answered as
        such) and how the loop ended."""
        next_check = time.monotonic() + self._reader_interval
        stop = False
        ended: outcome.Outcome[None] = outcome.Value(None)
        batch: list[_Ticket] = []
        while not stop:
            try:
                first = self._queue.get(timeout=max(0.0, next_check - time.monotonic()))
            except queue.Empty:  # idle for a whole interval
                next_check = time.monotonic() + self._reader_interval
                self.check_readers()
                continue
            if first is _STOP:
                break
            check = time.monotonic() >= next_check
            if check:
                next_check = time.monotonic() + self._reader_interval
            batch = [first]
            nops = len(first.ops)
            nbytes = first.size
            while nops < self._max_ops and nbytes < self._max_bytes:
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is _STOP:
                    stop = True
                    break
                batch.append(more)
                nops += len(more.ops)
                nbytes += more.size
            if self._abandon:
                _strand(batch)
                token.run_sync_soon(self._handed_back, batch, None)
                continue
            ops = batch[0].ops if len(batch) == 1 else [
                op for ticket in batch for op in ticket.ops]
            started = time.perf_counter()
            ended = outcome.capture(self._run_sync, ops, check)
            if isinstance(ended, outcome.Error):  # a bug: stop, answer this batch unrun
                _strand(batch)
                token.run_sync_soon(self._handed_back, batch, None)
                break
            token.run_sync_soon(self._handed_back, batch, time.perf_counter() - started)
        # Closed (or a bug above): answer whatever is left, unrun.
        left: list[_Ticket] = []
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is not _STOP:
                left.append(item)
        _strand(left)
        self.headroom.close()
        return left, ended

    def _handed_back(self, batch: list[_Ticket], elapsed: float | None) -> None:
        """On the event loop: a batch's answers are set (``elapsed``: seconds its
        commit took; ``None``: it was not run); wake its callers."""
        self._queued -= len(batch)
        self._room.set()
        self._room = trio.Event()
        if elapsed is not None:
            self.batches += 1
            nops = sum(len(t.ops) for t in batch)
            self.ops += nops
            if self.on_batch is not None:
                self.on_batch(nops, elapsed)
        for ticket in batch:
            if elapsed is not None and ticket.after is not None:
                ticket.after(ticket.ops)
            ticket.done.set()

    def _thread_ended(self, left: list[_Ticket], ended: outcome.Outcome[None]) -> None:
        """On the event loop: the commit thread has ended (``ended``: how)."""
        self._closed = True
        self._ended = ended
        self._handed_back(left, None)
        self.stopped.set()


def _strand(tickets: list[_Ticket]) -> None:
    """Answer every op of ``tickets`` as never run."""
    for ticket in tickets:
        for op in ticket.ops:
            op.error = trio.ClosedResourceError("storage writer stopped")
