"""The thread side of group commit: run one batch of ops in LMDB write transactions.

:class:`Committer` is the base of :class:`storage._group_commit.GroupCommitWriter`;
its methods run in the writer's worker thread (blocking), never on the event loop.
See :mod:`storage._group_commit` for what a batch is and how failures are split so
that every op gets its own answer.
"""

from __future__ import annotations

import errno
import logging
import sys
from collections import deque
from collections.abc import Callable
from typing import Any

import lmdb

from ._chains import Chains
from ._lmdb_counters import Counters
from ._lmdb_headroom import DiskHeadroom
from ._lmdb_layout import Dbs
from .errors import StorageError, StorageFull, StorageUnavailable

log = logging.getLogger("storage._group_commit")

_FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
BUMP_KEY = b"bump"
ROOM_RECHECK = 64
"""Commits after which the room left in the map is read exactly again (see Committer)."""
Op = Callable[[lmdb.Transaction, Dbs], Any]
FaultHook = Callable[[str], None]
"""Test-only fault injection: called with ``"commit"`` just before each commit; it
may raise ``lmdb.Error`` to simulate a failing medium (the transaction is aborted)."""


def default_reserve(map_size: int) -> int:
    """Bytes of the map kept free for freeing ops: 1/8 of it, at least 64 KiB and
    at most 16 MiB, never more than a quarter of the map.

    16 MiB holds the copy-on-write pages of a few of the largest freeing batches
    (1,024 deletions, each touching a leaf and its branch path: about 4 MiB) before
    LMDB can reuse the pages they free. The reserve is also kept *allocated* on disk
    ahead of the pages in use (:mod:`storage._lmdb_headroom`), so it is what an empty
    node's ``data.mdb`` costs from its first write: 64 MiB made that 129 MB per node
    (15 GB of the test suite's temporary files)."""
    return min(max(map_size // 8, 64 << 10), 16 << 20, map_size // 4)


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


class PendingOp:
    """One submitted op and its answer."""

    __slots__ = ("fn", "size", "est", "freeing", "value", "error")

    def __init__(self, fn: Op, size: int, est: int, freeing: bool) -> None:
        self.fn = fn
        self.size = size
        self.est = est
        self.freeing = freeing
        self.value: Any = None
        self.error: Exception | None = None


class _Failed(Exception):
    """An attempt was aborted: op ``index`` raised ``exc`` (None: the commit did)."""

    def __init__(self, index: int | None, exc: Exception) -> None:
        super().__init__(repr(exc))
        self.index = index
        self.exc = exc


class Committer:
    """Runs batches of ops in write transactions of ``env`` (blocking; one thread).

    Args:
        env, dbs: the open environment and its sub-database handles.
        limit_bytes: adding ops are refused (``StorageFull``) once the pages in use
            would exceed this; ``None``: ``map_size - default_reserve(map_size)``.
        fault_hook: test-only, see :data:`FaultHook`.
    """

    def __init__(self, env: lmdb.Environment, dbs: Dbs, *, limit_bytes: int | None = None,
                 fault_hook: FaultHook | None = None) -> None:
        self._env = env
        self._dbs = dbs
        map_size = env.info()["map_size"]
        self.limit_bytes = map_size - default_reserve(map_size) if limit_bytes is None else limit_bytes
        self.psize: int = env.stat()["psize"]
        self._fault = fault_hook
        #: data.mdb kept allocated ahead of the pages in use (:mod:`storage._lmdb_headroom`)
        self.headroom = DiskHeadroom(env, map_size, max(0, map_size - self.limit_bytes))
        self._disk_full = False
        # (waiting, running): the interpreter's switch interval while this thread may wait
        # for the GIL (begin, commit, fsync, queue) and while it runs a transaction's ops;
        # None: left alone. Set by the commit thread (storage._group_commit, "GIL").
        self._switch: tuple[float, float] | None = None
        # Room left after the last commit, carried to the next batch (reading it exactly
        # is a stat of every sub-database, ~20-30 us: most of a small batch's overhead).
        # It only shrinks by the ops' estimates (upper bounds; freeing ops never add),
        # so it stays conservative; it is read exactly again when an op does not fit,
        # after any failed attempt, and every ROOM_RECHECK commits.
        self._room_hint: int | None = None
        self._hint_age = 0
        #: Counters for tests and metrics.
        self.commits = 0
        self.pieces = 0
        self.refused_full = 0
        self.stale_readers_cleared = 0

    def _run_sync(self, ops: list[PendingOp], check_readers: bool) -> None:
        """Commit ``ops`` (splitting on failure, see the module docstring); set every answer.

        Ops are answered in list order (a split commits the ops before the failing
        one first), so the refusals an op's chain keys (``op.fn.chain``, see
        :mod:`storage._chains`) are checked against are those of earlier ops only.
        """
        if check_readers:
            self.check_readers()
        adding = sum(op.est for op in ops if not op.freeing)
        self._disk_full = bool(adding) and not self.headroom.ensure(adding, self._used_now)
        segments: deque[list[PendingOp]] = deque([ops])
        chains = Chains()
        bumped = False
        while segments:
            seg = segments.popleft()
            try:
                self._attempt(seg, chains)
                _record(chains, seg)
                bumped = False  # the pages this commit freed are pinned until the next one
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
                _record(chains, seg)
            elif k is not None:  # op k's put failed: commit what came before, then k alone
                segments.extendleft(p for p in (seg[k + 1:], [seg[k]], seg[:k]) if p)
            elif is_full_error(exc):  # no room at commit: bisect
                half = len(seg) // 2
                segments.extendleft((seg[half:], seg[:half]))
            else:  # the medium failed at commit: answer the whole transaction
                log.error("LMDB commit failed (%d ops refused): %r", len(seg), exc)
                for op in seg:
                    op.error = translate(exc)
                _record(chains, seg)

    def _refuse(self, op: PendingOp, exc: Exception) -> None:
        """Answer ``op``, which failed alone with ``exc``; a freeing op that found no
        room is first retried in pieces."""
        err = translate(exc) if isinstance(exc, lmdb.Error) else StorageUnavailable(repr(exc))
        if isinstance(err, StorageFull) and op.freeing and hasattr(op.fn, "piece"):
            err = self._in_pieces(op) or err
            if op.error is None:
                return
        if op.freeing:
            log.error("a freeing storage op failed alone: %r", err)
        elif not isinstance(err, StorageFull):
            log.error("a storage op failed alone: %r", exc)
        op.error = err

    def _in_pieces(self, op: PendingOp) -> StorageError | None:
        """Run a freeing op (a ``_lmdb_ops.Deletion``) in pieces of at most 1024
        records, halving on a full map; each piece is its own commit. Sets the
        op's answer (the sum of the counts) and returns None, or returns the error.
        """
        total, limit, bumped = 0, 1024, False
        while limit:
            piece = PendingOp(op.fn.piece(limit), 0, 0, True)  # type: ignore[attr-defined]
            try:
                self._attempt([piece], Chains())
            except _Failed as failed:
                if not (isinstance(failed.exc, lmdb.Error) and is_full_error(failed.exc)):
                    return translate(failed.exc) if isinstance(failed.exc, lmdb.Error) \
                        else StorageUnavailable(repr(failed.exc))
                if not bumped and self._bump():
                    bumped = True
                else:
                    limit //= 2
                continue
            bumped = False
            self.pieces += 1
            count, done = piece.value
            total += count
            if done:
                op.value, op.error = total, None
                return None
        return StorageFull("storage full: no room even to delete one record")

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
        self._room_hint = None
        try:
            with self._env.begin(write=True) as txn:
                raw = txn.get(BUMP_KEY, db=self._dbs.meta)
                n = int.from_bytes(raw, "big") if raw else 0
                txn.put(BUMP_KEY, ((n + 1) % 2**64).to_bytes(8, "big"), db=self._dbs.meta)
        except lmdb.Error as exc:
            log.warning("LMDB map full, even a one-record commit failed: %r", exc)
            return False
        return True

    def _used_now(self) -> int:
        with self._env.begin() as txn:
            return self.used_bytes(txn)

    def used_bytes(self, txn: lmdb.Transaction) -> int:
        """Bytes of the pages the transaction's snapshot uses (all sub-databases, the
        main database and the two meta pages; not the free list)."""
        pages = 3
        for db in self._dbs.all():
            st = txn.stat(db)
            pages += st["branch_pages"] + st["leaf_pages"] + st["overflow_pages"]
        return pages * self.psize

    def _attempt(self, seg: list[PendingOp], chains: Chains) -> None:
        """One write transaction over ``seg``: committed with every answer set, or
        aborted with nothing stored and no answer set. An op whose chain keys hit a
        refusal (``chains``, then the earlier ops of ``seg``) is skipped unrun.

        Raises:
            _Failed: an op or the commit failed; the transaction was aborted.
        """
        results: list[tuple[Any, Exception | None]] = []
        room = self._room_hint if self._hint_age < ROOM_RECHECK else None
        self._room_hint = None  # until this attempt commits
        trial = chains.fork()
        txn = self._env.begin(write=True)
        counters = Counters(txn, self._dbs)
        committed = False
        switch = self._switch
        if switch is not None:  # the ops run Python: the loop waits the usual interval
            sys.setswitchinterval(switch[1])
        try:
            for i, op in enumerate(seg):
                keys = getattr(op.fn, "chain", ())
                if keys:
                    blocked = trial.blocking(keys)
                    if blocked is not None:
                        results.append((None, blocked))
                        trial.record(keys, blocked)
                        continue
                if not op.freeing and self._disk_full:
                    full = StorageFull("storage full: the disk has no room for data.mdb "
                                       "to grow (freeing ops still work)")
                    results.append((None, full))
                    trial.record(keys, full)
                    continue
                if not op.freeing:
                    if room is None or op.est > room:
                        room = self.limit_bytes - self.used_bytes(txn)  # exact, when in doubt
                        self._hint_age = 0
                    if op.est > room:
                        full = StorageFull(f"storage full: {op.est} more bytes do not fit "
                                           f"within the {self.limit_bytes}-byte bound")
                        results.append((None, full))
                        trial.record(keys, full)
                        continue
                    room -= op.est
                try:
                    if getattr(op.fn, "counters", False):
                        value = op.fn(txn, self._dbs, counters)  # type: ignore[call-arg]
                    else:
                        _flush(counters)  # the op may read or write them in txn
                        value = op.fn(txn, self._dbs)
                    results.append((value, None))
                except _Failed:
                    raise
                except StorageError as exc:  # validation failed before the op wrote anything
                    results.append((None, exc))
                    trial.record(keys, exc)
                except Exception as exc:  # an LMDB error, or a bug in this op: it alone fails
                    raise _Failed(i, exc) from exc
            _flush(counters)
            if self._fault is not None:
                try:
                    self._fault("commit")
                except lmdb.Error as exc:
                    raise _Failed(None, exc) from exc
            if switch is not None:  # the commit releases the GIL: take it back soon after
                sys.setswitchinterval(switch[0])
            try:
                txn.commit()
            except lmdb.Error as exc:
                raise _Failed(None, exc) from exc
            committed = True
        finally:
            if switch is not None:
                sys.setswitchinterval(switch[0])
            if not committed:
                txn.abort()  # a no-op after a failed commit
        self.commits += 1
        self._room_hint = room
        self._hint_age += 1
        for op, (value, error) in zip(seg, results, strict=True):
            op.value, op.error = value, error
            if isinstance(error, StorageFull):
                self.refused_full += 1


def _flush(counters: Counters) -> None:
    """Write the batch's counters into its transaction (:mod:`storage._lmdb_counters`).

    Raises:
        _Failed: a write failed (index ``None``: the ops before are to blame, as
            for a failed commit).
    """
    try:
        counters.flush()
    except lmdb.Error as exc:
        raise _Failed(None, exc) from exc


def _record(chains: Chains, seg: list[PendingOp]) -> None:
    """Note the answers of ``seg``, now final, for the chain keys of later ops."""
    for op in seg:
        keys = getattr(op.fn, "chain", ())
        if keys:
            chains.record(keys, op.error)
