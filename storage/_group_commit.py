"""Group commit: one writer task owns every write to an LMDB environment.

Callers :meth:`GroupCommitWriter.submit` an op (a function ``(txn, dbs) ->
result``, see :mod:`storage._lmdb_ops`) into a bounded Trio memory channel and
wait for their own result. The writer task takes the first op, drains whatever
else is already queued (up to ``max_batch_ops`` ops or ``max_batch_bytes``),
and runs the whole batch in **one** write transaction inside **one**
``trio.to_thread.run_sync`` call: the puts, the commit and its fsync all happen
in that thread, never on the event loop, and no write transaction ever lives
across an ``await``. Then it wakes every caller with its own result or
exception.

Isolation of ops within a batch: every op validates before it writes (see
:mod:`storage._lmdb_ops`), so a domain error (``QueueFull``, ``DuplicateKey``,
``StaleVersion``) is raised before the op touched the transaction and the other
ops of the batch commit normally. We chose this over nested transactions
(``env.begin(write=True, parent=txn)`` per op) because it costs nothing per op
(a child transaction allocates and merges dirty-page lists) and also works with
``writemap=True``, where LMDB forbids nested transactions.

Full map or disk (``lmdb.MapFullError``, ENOSPC/EDQUOT): the transaction is
aborted, so nothing of the batch is stored. Every op that adds data gets
:class:`~storage.errors.StorageFull`; the *freeing* ops of the batch (acks,
purges, expiry, claims, outbox deletes and retries) are retried alone in a new
transaction. Because LMDB is copy-on-write, even a delete needs a few free
pages; if the map is so full that a freeing-only transaction still fails, the
writer grows the map a little (``set_mapsize``, from the event-loop thread
between transactions, when no transaction of this process is open: writes only
run inside the writer's thread call and reads never span an ``await``) and
retries, so that a full node can always drain its queues.

Ops submitted concurrently may be applied in any order; ops of one task, which
awaits each before the next, are applied in order.
"""

from __future__ import annotations

import errno
import logging
from collections.abc import Callable
from typing import Any

import lmdb
import trio

from ._lmdb_layout import Dbs
from .errors import StorageError, StorageFull

log = logging.getLogger(__name__)

_FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT}
BUMP_KEY = b"bump"


def is_full_error(exc: lmdb.Error) -> bool:
    """True if ``exc`` means "no room": a full LMDB map or a full disk/quota."""
    code = getattr(exc, "code", None)
    if code is None and len(exc.args) >= 2 and isinstance(exc.args[1], int):
        code = exc.args[1]  # constructed from Python as Error(what, code)
    return isinstance(exc, lmdb.MapFullError | lmdb.DiskError) or code in _FULL_ERRNOS


def translate(exc: lmdb.Error) -> StorageError:
    """The storage error for an LMDB error, chained to it."""
    err: StorageError
    if is_full_error(exc):
        err = StorageFull(f"storage full: {exc}")
    else:
        err = StorageError(f"LMDB write failed: {exc}")
    err.__cause__ = exc
    return err


class _Pending:
    """One submitted op and its result slot."""

    __slots__ = ("op", "size", "freeing", "done", "value", "error")

    def __init__(self, op: Callable[[lmdb.Transaction, Dbs], Any], size: int, freeing: bool):
        self.op = op
        self.size = size
        self.freeing = freeing
        self.done = trio.Event()
        self.value: Any = None
        self.error: Exception | None = None


class _OpCrashed(Exception):
    """An op raised something that is neither a domain error nor an LMDB error (a bug)."""

    def __init__(self, pending: _Pending, exc: Exception) -> None:
        super().__init__(repr(exc))
        self.pending = pending
        self.exc = exc


class GroupCommitWriter:
    """The single writer of one environment. Run :meth:`serve` in a nursery.

    Args:
        env, dbs: the open environment and its sub-database handles.
        max_batch_ops: most ops per transaction.
        max_batch_bytes: a batch stops growing once its ops' payload bytes reach this.
        queue_size: bound of the submission channel (callers wait when it is full).
        max_grow_attempts: map growths tried for a freeing-only batch on a full map.
    """

    def __init__(
        self, env: lmdb.Environment, dbs: Dbs, *, max_batch_ops: int = 1024,
        max_batch_bytes: int = 16 * 1024 * 1024, queue_size: int = 1024,
        max_grow_attempts: int = 4,
    ) -> None:
        self._env = env
        self._dbs = dbs
        self._max_ops = max_batch_ops
        self._max_bytes = max_batch_bytes
        self._max_grow = max_grow_attempts
        self._send, self._recv = trio.open_memory_channel[_Pending](queue_size)
        self.stopped = trio.Event()
        #: Counters for tests and metrics.
        self.batches = 0
        self.ops = 0
        self.grown_bytes = 0

    async def submit(
        self, op: Callable[[lmdb.Transaction, Dbs], Any], *, size: int = 0, freeing: bool = False
    ) -> Any:
        """Run ``op`` in the next batch; return its result or raise its exception.

        Raises:
            trio.ClosedResourceError: the writer is closed or stopped.
            StorageFull, StorageError, or the op's domain error.

        If the caller is cancelled after the op was queued, the op may still be
        applied (entirely or not at all).
        """
        pending = _Pending(op, size, freeing)
        try:
            await self._send.send(pending)
        except (trio.ClosedResourceError, trio.BrokenResourceError) as exc:
            raise trio.ClosedResourceError("storage is closed") from exc
        await pending.done.wait()
        if pending.error is not None:
            raise pending.error
        return pending.value

    def close(self) -> None:
        """Accept no more ops; :meth:`serve` commits what is queued, then returns."""
        self._send.close()

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run batches until :meth:`close` and the queue is drained (or cancelled)."""
        batch: list[_Pending] = []
        try:
            task_status.started()
            while True:
                try:
                    first = await self._recv.receive()
                except trio.EndOfChannel:
                    return
                batch = [first]
                nbytes = first.size
                while len(batch) < self._max_ops and nbytes < self._max_bytes:
                    try:
                        more = self._recv.receive_nowait()
                    except (trio.WouldBlock, trio.EndOfChannel):
                        break
                    batch.append(more)
                    nbytes += more.size
                await self._run(batch)
                for pending in batch:
                    pending.done.set()
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
            for pending in stranded:
                if not pending.done.is_set():
                    pending.error = pending.error or trio.ClosedResourceError(
                        "storage writer stopped"
                    )
                    pending.done.set()
            self.stopped.set()

    async def _run(self, batch: list[_Pending]) -> None:
        # Not cancellable: the transaction always runs to commit or abort in its thread.
        need_room = await trio.to_thread.run_sync(self._run_sync, batch)
        step = max(self._env.info()["map_size"] // 16, 1 << 20)
        for _ in range(self._max_grow):
            if not need_room:
                break
            new_size = self._env.info()["map_size"] + step
            log.warning("LMDB map full; growing it to %d bytes so deletions can proceed", new_size)
            try:
                # Safe here: no write txn is open (the thread call returned) and
                # reads never hold a transaction across an await.
                self._env.set_mapsize(new_size)
            except lmdb.Error as exc:
                log.error("cannot grow the LMDB map: %r", exc)
                break
            self.grown_bytes += step
            step *= 2
            need_room = await trio.to_thread.run_sync(self._run_sync, need_room)
        for pending in need_room:
            pending.error = StorageFull("storage full: no room even to delete")
        self.batches += 1
        self.ops += len(batch)

    def _run_sync(self, batch: list[_Pending]) -> list[_Pending]:
        """In the writer thread: commit ``batch``; return the freeing ops that found no room."""
        pending = list(batch)
        bumped = False
        while pending:
            try:
                results = self._attempt(pending)
            except _OpCrashed as crash:
                log.error("storage op failed unexpectedly: %r", crash.exc)
                crash.pending.error = crash.exc
                pending.remove(crash.pending)
                continue
            except lmdb.Error as exc:
                err = translate(exc)
                growing = [p for p in pending if not p.freeing]
                freeing = [p for p in pending if p.freeing]
                if not isinstance(err, StorageFull):
                    log.error("LMDB write transaction failed: %r", exc)
                    for p in pending:
                        p.error = err
                    return []
                if not bumped and isinstance(exc, lmdb.MapFullError):
                    # Pages freed by the last commit become reusable only after one
                    # more commit (LMDB keeps the previous snapshot as a fallback).
                    # Commit a tiny meta update, then retry the batch once.
                    bumped = True
                    if self._bump():
                        continue
                if growing:
                    for p in growing:
                        p.error = err
                    pending = freeing
                    continue
                if isinstance(exc, lmdb.MapFullError):
                    return freeing  # even deletions need pages: the caller grows the map
                for p in freeing:
                    p.error = err
                return []
            for p, (value, error) in zip(pending, results, strict=True):
                p.value, p.error = value, error
            return []
        return []

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

    def _attempt(self, pending: list[_Pending]) -> list[tuple[Any, Exception | None]]:
        """One write transaction over ``pending``: committed, or aborted with nothing stored.

        Raises:
            lmdb.Error: a put or the commit failed; the transaction was aborted.
            _OpCrashed: an op failed unexpectedly; the transaction was aborted.
        """
        results: list[tuple[Any, Exception | None]] = []
        # The context manager commits on normal exit and aborts on any exception.
        with self._env.begin(write=True) as txn:
            for p in pending:
                try:
                    results.append((p.op(txn, self._dbs), None))
                except StorageError as exc:  # validation failed before the op wrote anything
                    results.append((None, exc))
                except lmdb.Error:
                    raise
                except Exception as exc:  # a bug in one op: drop it, retry the others
                    raise _OpCrashed(p, exc) from exc
        return results
