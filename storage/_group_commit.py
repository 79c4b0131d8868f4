"""Group commit: one writer task owns every write to an LMDB environment.

Callers :meth:`GroupCommitWriter.submit` one op, or :meth:`~GroupCommitWriter.submit_many`
a list of ops (a function ``(txn, dbs) -> result`` each, see :mod:`storage._lmdb_ops`),
into a bounded Trio memory channel and wait for their own results. The writer
task takes the first submission, drains whatever else is already queued (up to
``max_batch_ops`` ops or ``max_batch_bytes``), and runs the whole batch in
**one** write transaction inside **one** ``trio.to_thread.run_sync`` call: the
puts, the commit and its fsync all happen in that thread, never on the event
loop, and no write transaction ever lives across an ``await``. Then it wakes
every caller with the answer of each of its ops.

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
Pages freed by a commit are reused by later ones; because LMDB keeps the previous
snapshot, pages freed by the last commit become reusable only after one more,
so on a ``MapFullError`` the writer first commits a one-record "bump" and
retries once.

**Stale readers.** A process killed while it had the environment open leaves its
reader slot behind; enough of them fill the reader table (``MDB_READERS_FULL``)
and pin old pages. The writer runs ``env.reader_check()`` in its thread every
``reader_check_interval`` seconds (Trio's clock): before a batch once the
interval has passed, and when it has been idle that long.

Ops submitted concurrently may be applied in any order; ops of one task, which
awaits each before the next, are applied in order.

This module is the Trio side (submission, batching, the writer task); the
transactions themselves run in :class:`storage._lmdb_commit.Committer`, its base.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import lmdb
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
    """One submission (one or more ops) and the event its caller waits on."""

    __slots__ = ("ops", "size", "done")

    def __init__(self, ops: list[PendingOp], size: int) -> None:
        self.ops = ops
        self.size = size
        self.done = trio.Event()


class GroupCommitWriter(Committer):
    """The single writer of one environment. Run :meth:`serve` in a nursery.

    Args:
        env, dbs: the open environment and its sub-database handles.
        max_batch_ops: most ops per transaction (one ``submit_many`` is never split
            across batches, so it may exceed this alone).
        max_batch_bytes: a batch stops growing once its ops' payload bytes reach this.
        queue_size: bound of the submission channel (callers wait when it is full).
        limit_bytes: adding ops are refused (``StorageFull``) once the pages in use
            would exceed this; ``None``: ``map_size - default_reserve(map_size)``.
        reader_check_interval: seconds between ``env.reader_check()`` calls.
        fault_hook: test-only, see :data:`FaultHook`.
    """

    def __init__(
        self, env: lmdb.Environment, dbs: Dbs, *, max_batch_ops: int = 1024,
        max_batch_bytes: int = 16 * 1024 * 1024, queue_size: int = 1024,
        limit_bytes: int | None = None, reader_check_interval: float = 10.0,
        fault_hook: FaultHook | None = None,
    ) -> None:
        super().__init__(env, dbs, limit_bytes=limit_bytes, fault_hook=fault_hook)
        self._max_ops = max_batch_ops
        self._max_bytes = max_batch_bytes
        self._reader_interval = reader_check_interval
        self._next_reader_check = 0.0  # set when serve() starts
        self._send, self._recv = trio.open_memory_channel[_Ticket](queue_size)
        self.stopped = trio.Event()
        #: Counters for tests and metrics (more in Committer).
        self.batches = 0
        self.ops = 0
        #: Optional observer, called on the event loop after every batch with
        #: ``(ops in the batch, seconds the batch's thread call took)``; it must
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
        await self._queue(_Ticket([pending], size))
        if pending.error is not None:
            raise pending.error
        return pending.value

    async def submit_many(
        self, ops: list[tuple[Op, int, int | None, bool]]
    ) -> list[tuple[Any, Exception | None]]:
        """Run ``(op, size, est, freeing)`` tuples (see :meth:`submit`) in list order,
        together in the next batch; return ``(value, error)`` per op, in order.

        Each op is atomic on its own; one op's error never fails another.

        Raises:
            trio.ClosedResourceError: the writer is closed or stopped.
        """
        if not ops:
            await trio.lowlevel.checkpoint()
            return []
        pending = [PendingOp(fn, size, 2 * size + 256 if est is None else est, freeing)
                   for fn, size, est, freeing in ops]
        await self._queue(_Ticket(pending, sum(p.size for p in pending)))
        return [(p.value, p.error) for p in pending]

    async def _queue(self, ticket: _Ticket) -> None:
        """Queue ``ticket`` and wait until its ops are answered."""
        try:
            await self._send.send(ticket)
        except (trio.ClosedResourceError, trio.BrokenResourceError) as exc:
            raise trio.ClosedResourceError("storage is closed") from exc
        await ticket.done.wait()

    def close(self) -> None:
        """Accept no more ops; :meth:`serve` commits what is queued, then returns."""
        self._send.close()

    # -- the writer task

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run batches until :meth:`close` and the queue is drained (or cancelled)."""
        batch: list[_Ticket] = []
        try:
            task_status.started()
            self._next_reader_check = trio.current_time() + self._reader_interval
            while True:
                first: _Ticket | None = None
                with trio.move_on_at(self._next_reader_check):
                    try:
                        first = await self._recv.receive()
                    except trio.EndOfChannel:
                        return
                check = trio.current_time() >= self._next_reader_check
                if check:
                    self._next_reader_check = trio.current_time() + self._reader_interval
                if first is None:  # idle for a whole interval
                    await trio.to_thread.run_sync(self.check_readers)
                    continue
                batch = [first]
                nops = len(first.ops)
                nbytes = first.size
                while nops < self._max_ops and nbytes < self._max_bytes:
                    try:
                        more = self._recv.receive_nowait()
                    except (trio.WouldBlock, trio.EndOfChannel):
                        break
                    batch.append(more)
                    nops += len(more.ops)
                    nbytes += more.size
                ops = batch[0].ops if len(batch) == 1 else [
                    op for ticket in batch for op in ticket.ops]
                # Not cancellable: the transaction always runs to commit or abort in its thread.
                started = time.perf_counter()
                await trio.to_thread.run_sync(self._run_sync, ops, check)
                self.batches += 1
                self.ops += len(ops)
                if self.on_batch is not None:
                    self.on_batch(len(ops), time.perf_counter() - started)
                for ticket in batch:
                    ticket.done.set()
                batch = []
        finally:
            # Cancelled or closed: nobody may wait forever on an op that will never run.
            stranded = list(batch)
            while True:
                try:
                    stranded.append(self._recv.receive_nowait())
                except (trio.WouldBlock, trio.EndOfChannel):
                    break
            self._recv.close()  # later submits fail with ClosedResourceError
            for ticket in stranded:
                if not ticket.done.is_set():  # its ops never ran
                    for op in ticket.ops:
                        op.error = trio.ClosedResourceError("storage writer stopped")
                    ticket.done.set()
            self.stopped.set()
