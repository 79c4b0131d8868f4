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
and pin old pages. The writer runs ``env.reader_check()`` every
``reader_check_interval`` seconds (monotonic clock) in its thread, before a batch.

Ops submitted concurrently may be applied in any order; ops of one task, which
awaits each before the next, are applied in order.
"""

from __future__ import annotations

import errno
import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import lmdb
import trio

from ._lmdb_layout import Dbs
from .errors import StorageError, StorageFull, StorageUnavailable

log = logging.getLogger(__name__)

_FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT}
BUMP_KEY = b"bump"
Op = Callable[[lmdb.Transaction, Dbs], Any]
FaultHook = Callable[[str], None]
"""Test-only fault injection: called with ``"commit"`` just before each commit; it
may raise ``lmdb.Error`` to simulate a failing medium (the transaction is aborted)."""


def default_reserve(map_size: int) -> int:
    """Bytes of the map kept free for freeing ops: 1/8 of it, at least 64 KiB and
    at most 64 MiB, never more than a quarter of the map."""
    return min(max(map_size // 8, 64 << 10), 64 << 20, map_size // 4)


def _errno_of(exc: lmdb.Error) -> int | None:
    code = getattr(exc, "code", None)
    if code is None and len(exc.args) >= 2 and isinstance(exc.args[1], int):
        code = exc.args[1]  # constructed from Python as Error(what, code)
    return code


def is_full_error(exc: lmdb.Error) -> bool:
    """True if ``exc`` means "no room": a full LMDB map or a full disk/quota."""
    return isinstance(exc, lmdb.MapFullError | lmdb.DiskError) or _errno_of(exc) in _FULL_ERRNOS


def translate(exc: lmdb.Error) -> StorageError:
    """The storage error for an LMDB error, chained to it: ``StorageFull`` for no
    room, ``StorageUnavailable`` for anything else (EIO, panic, corruption)."""
    err: StorageError
    if is_full_error(exc):
        err = StorageFull(f"storage full: {exc}")
    else:
        err = StorageUnavailable(f"LMDB failed: {exc}")
    err.__cause__ = exc
    return err


class _Op:
    """One submitted op and its answer."""

    __slots__ = ("fn", "size", "est", "freeing", "value", "error")

    def __init__(self, fn: Op, size: int, est: int, freeing: bool) -> None:
        self.fn = fn
        self.size = size
        self.est = est
        self.freeing = freeing
        self.value: Any = None
        self.error: Exception | None = None


class _Ticket:
    """One submission (one or more ops) and the event its caller waits on."""

    __slots__ = ("ops", "done")

    def __init__(self, ops: list[_Op]) -> None:
        self.ops = ops
        self.done = trio.Event()


class _Failed(Exception):
    """An attempt was aborted: op ``index`` raised ``exc`` (None: the commit did)."""

    def __init__(self, index: int | None, exc: Exception) -> None:
        super().__init__(repr(exc))
        self.index = index
        self.exc = exc


class GroupCommitWriter:
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
        limit_bytes: int | None = None, reader_check_interval: float = 30.0,
        fault_hook: FaultHook | None = None,
    ) -> None:
        self._env = env
        self._dbs = dbs
        self._max_ops = max_batch_ops
        self._max_bytes = max_batch_bytes
        map_size = env.info()["map_size"]
        self.limit_bytes = map_size - default_reserve(map_size) if limit_bytes is None else limit_bytes
        self.psize: int = env.stat()["psize"]
        self._reader_interval = reader_check_interval
        self._next_reader_check = time.monotonic() + reader_check_interval
        self._fault = fault_hook
        self._send, self._recv = trio.open_memory_channel[_Ticket](queue_size)
        self.stopped = trio.Event()
        #: Counters for tests and metrics.
        self.batches = 0
        self.ops = 0
        self.commits = 0
        self.refused_full = 0
        self.stale_readers_cleared = 0

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
        [(value, error)] = await self._submit([self._op(op, size, est, freeing)])
        if error is not None:
            raise error
        return value

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
        return await self._submit([self._op(*spec) for spec in ops])

    @staticmethod
    def _op(fn: Op, size: int, est: int | None, freeing: bool) -> _Op:
        return _Op(fn, size, 2 * size + 256 if est is None else est, freeing)

    async def _submit(self, ops: list[_Op]) -> list[tuple[Any, Exception | None]]:
        ticket = _Ticket(ops)
        try:
            await self._send.send(ticket)
        except (trio.ClosedResourceError, trio.BrokenResourceError) as exc:
            raise trio.ClosedResourceError("storage is closed") from exc
        await ticket.done.wait()
        return [(op.value, op.error) for op in ops]

    def close(self) -> None:
        """Accept no more ops; :meth:`serve` commits what is queued, then returns."""
        self._send.close()

    # -- the writer task

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run batches until :meth:`close` and the queue is drained (or cancelled)."""
        batch: list[_Ticket] = []
        try:
            task_status.started()
            while True:
                try:
                    first = await self._recv.receive()
                except trio.EndOfChannel:
                    return
                batch = [first]
                nops = len(first.ops)
                nbytes = sum(op.size for op in first.ops)
                while nops < self._max_ops and nbytes < self._max_bytes:
                    try:
                        more = self._recv.receive_nowait()
                    except (trio.WouldBlock, trio.EndOfChannel):
                        break
                    batch.append(more)
                    nops += len(more.ops)
                    nbytes += sum(op.size for op in more.ops)
                ops = [op for ticket in batch for op in ticket.ops]
                # Not cancellable: the transaction always runs to commit or abort in its thread.
                await trio.to_thread.run_sync(self._run_sync, ops)
                self.batches += 1
                self.ops += len(ops)
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

    # -- in the writer thread

    def _run_sync(self, ops: list[_Op]) -> None:
        """Commit ``ops`` (splitting on failure, see the module docstring); set every answer."""
        now = time.monotonic()
        if now >= self._next_reader_check:
            self._next_reader_check = now + self._reader_interval
            self.check_readers()
        segments: deque[list[_Op]] = deque([ops])
        bumped = False
        while segments:
            seg = segments.popleft()
            try:
                self._attempt(seg)
                continue
            except _Failed as failed:
                exc, k = failed.exc, failed.index
            if isinstance(exc, lmdb.MapFullError) and not bumped:
                # Pages freed by the last commit become reusable only after one more
                # commit (LMDB keeps the previous snapshot): commit a tiny update, retry.
                bumped = True
                if self._bump():
                    segments.appendleft(seg)
                    continue
            if k is not None and not isinstance(exc, lmdb.Error):
                log.error("storage op failed unexpectedly: %r", exc)
                seg[k].error = exc  # a bug in one op: drop it, retry the others
                segments.extendleft(p for p in (seg[k + 1:], seg[:k]) if p)
            elif len(seg) == 1:
                self._refuse(seg[0], exc)
            elif k is not None:  # op k's put failed: commit what came before, then k alone
                segments.extendleft(p for p in (seg[k + 1:], [seg[k]], seg[:k]) if p)
            elif is_full_error(exc):  # no room at commit: bisect
                half = len(seg) // 2
                segments.extendleft((seg[half:], seg[:half]))
            else:  # the medium failed at commit: answer the whole transaction
                log.error("LMDB commit failed (%d ops refused): %r", len(seg), exc)
                for op in seg:
                    op.error = translate(exc)

    def _refuse(self, op: _Op, exc: Exception) -> None:
        err = translate(exc) if isinstance(exc, lmdb.Error) else StorageUnavailable(repr(exc))
        if op.freeing:
            log.error("a freeing storage op failed alone: %r", exc)
        elif not isinstance(err, StorageFull):
            log.error("a storage op failed alone: %r", exc)
        op.error = err

    def check_readers(self) -> int:
        """Clear reader slots of dead processes (blocking, cheap); return how many."""
        try:
            cleared = self._env.reader_check()
        except lmdb.Error as exc:
            log.warning("LMDB reader_check failed: %r", exc)
            return 0
        if cleared:
            log.info("cleared %d stale LMDB reader slot(s)", cleared)
            self.stale_readers_cleared += cleared
        return cleared

    def _bump(self) -> bool:
        """Commit a one-record write so the previous commit's free pages become reusable."""
        try:
            with self._env.begin(write=True) as txn:
                raw = txn.get(BUMP_KEY, db=self._dbs.meta)
                n = int.from_bytes(raw, "big") if raw else 0
                txn.put(BUMP_KEY, ((n + 1) % 2**64).to_bytes(8, "big"), db=self._dbs.meta)
        except lmdb.Error as exc:
            log.warning("LMDB map full, even a one-record commit failed: %r", exc)
            return False
        return True

    def used_bytes(self, txn: lmdb.Transaction) -> int:
        """Bytes of the pages the transaction's snapshot uses (all sub-databases, the
        main database and the two meta pages; not the free list)."""
        pages = 3
        for db in self._dbs.all():
            st = txn.stat(db)
            pages += st["branch_pages"] + st["leaf_pages"] + st["overflow_pages"]
        return pages * self.psize

    def _attempt(self, seg: list[_Op]) -> None:
        """One write transaction over ``seg``: committed with every answer set, or
        aborted with nothing stored and no answer set.

        Raises:
            _Failed: an op or the commit failed; the transaction was aborted.
        """
        results: list[tuple[Any, Exception | None]] = []
        room: int | None = None
        txn = self._env.begin(write=True)
        committed = False
        try:
            for i, op in enumerate(seg):
                if not op.freeing:
                    if room is None or op.est > room:
                        room = self.limit_bytes - self.used_bytes(txn)  # exact, when in doubt
                    if op.est > room:
                        results.append((None, StorageFull(
                            f"storage full: {op.est} more bytes do not fit within the "
                            f"{self.limit_bytes}-byte bound")))
                        continue
                    room -= op.est
                try:
                    results.append((op.fn(txn, self._dbs), None))
                except StorageError as exc:  # validation failed before the op wrote anything
                    results.append((None, exc))
                except Exception as exc:  # an LMDB error, or a bug in this op: it alone fails
                    raise _Failed(i, exc) from exc
            if self._fault is not None:
                try:
                    self._fault("commit")
                except lmdb.Error as exc:
                    raise _Failed(None, exc) from exc
            try:
                txn.commit()
            except lmdb.Error as exc:
                raise _Failed(None, exc) from exc
            committed = True
        finally:
            if not committed:
                txn.abort()  # a no-op after a failed commit
        self.commits += 1
        for op, (value, error) in zip(seg, results, strict=True):
            op.value, op.error = value, error
            if isinstance(error, StorageFull):
                self.refused_full += 1
