"""The device-list watchers of :class:`storage.lmdb.LmdbStorage`: layout, ops and methods.

Two sub-databases (``ts_key``: :func:`storage._lmdb_layout.ts_key`)::

    watchers   user | "|" | watcher                    last refresh f64 (seconds)
    watch_idx  b"a" user | "|" | ts_key | watcher      empty: user's watchers, oldest first
               b"t" ts_key | user | "|" | watcher      empty: every pair, oldest first (expiry)
               b"n" user                               u64: how many watchers user has
               b"w" watcher                            u64: how many users watcher watches

So :meth:`~storage.base.Storage.add_watcher` finds the least recently refreshed
watcher of a user with one cursor step, checks both bounds with two reads, and
:meth:`~storage.base.Storage.expire_watchers` costs what expires, not what is stored.
A store written before the times existed (``watchers`` values empty) is indexed once
at open, every pair refreshed at that moment (``meta`` ``watch_indexed``); in a map
too full for that, those pairs are dropped instead.
"""

from __future__ import annotations

import time

import lmdb
import trio

from . import _lmdb_layout as L
from ._keys import check_user_id
from ._lmdb_ops import Deletion, Op
from .base import WatchAdded

WATCH_INDEXED = b"watch_indexed"


def _age(user: bytes, tsk: bytes, watcher: bytes) -> bytes:
    return b"a" + user + b"|" + tsk + watcher


def _time(tsk: bytes, user: bytes, watcher: bytes) -> bytes:
    return b"t" + tsk + user + b"|" + watcher


def _bump(txn: lmdb.Transaction, dbs: L.Dbs, key: bytes, delta: int) -> int:
    raw = txn.get(key, db=dbs.watch_idx)
    n = (L.unpack_u64(raw) if raw is not None else 0) + delta
    if n > 0:
        txn.put(key, L.pack_u64(n), db=dbs.watch_idx)
    else:
        txn.delete(key, db=dbs.watch_idx)
    return n


def _count(txn: lmdb.Transaction, dbs: L.Dbs, key: bytes) -> int:
    raw = txn.get(key, db=dbs.watch_idx)
    return L.unpack_u64(raw) if raw is not None else 0


def put(txn: lmdb.Transaction, dbs: L.Dbs, user: bytes, watcher: bytes, ts: float) -> bool:
    """Store the pair refreshed at ``ts``, or raise its time to ``ts``; no bound is
    checked. True if the pair is new."""
    pair = user + b"|" + watcher
    old = txn.get(pair, db=dbs.watchers)
    if old is not None:
        was = L.unpack_f64(old)
        if was >= ts:
            return False
        tsk = L.ts_key(was)
        txn.delete(_age(user, tsk, watcher), db=dbs.watch_idx)
        txn.delete(_time(tsk, user, watcher), db=dbs.watch_idx)
    else:
        _bump(txn, dbs, b"n" + user, 1)
        _bump(txn, dbs, b"w" + watcher, 1)
    tsk = L.ts_key(ts)
    txn.put(pair, L.pack_f64(ts), db=dbs.watchers)
    txn.put(_age(user, tsk, watcher), b"", db=dbs.watch_idx)
    txn.put(_time(tsk, user, watcher), b"", db=dbs.watch_idx)
    return old is None


def drop(txn: lmdb.Transaction, dbs: L.Dbs, user: bytes, watcher: bytes) -> None:
    """Delete the pair, its index entries and its counts (absent: nothing)."""
    old = txn.pop(user + b"|" + watcher, db=dbs.watchers)
    if old is None:
        return
    tsk = L.ts_key(L.unpack_f64(old))
    txn.delete(_age(user, tsk, watcher), db=dbs.watch_idx)
    txn.delete(_time(tsk, user, watcher), db=dbs.watch_idx)
    _bump(txn, dbs, b"n" + user, -1)
    _bump(txn, dbs, b"w" + watcher, -1)


def records(txn: lmdb.Transaction, dbs: L.Dbs, user: bytes) -> list[tuple[str, float]]:
    """``(watcher, last refresh)`` of ``user``'s watchers, ascending by watcher."""
    prefix = user + b"|"
    out: list[tuple[str, float]] = []
    with txn.cursor(db=dbs.watchers) as cur:
        if not cur.set_range(prefix):
            return out
        for key, value in cur:
            if not key.startswith(prefix):
                break
            out.append((key[len(prefix):].decode("utf-8"), L.unpack_f64(value)))
    return out


def delete_user(txn: lmdb.Transaction, dbs: L.Dbs, user: bytes) -> None:
    """Delete every watcher pair of ``user`` (as the watched user)."""
    for w, _ in records(txn, dbs, user):
        drop(txn, dbs, user, w.encode())


def add_op(user: bytes, watcher: bytes, ts: float, max_watchers: int | None,
           max_watching: int | None) -> Op:
    """:meth:`storage.base.Storage.add_watcher` in one transaction."""
    def op(txn: lmdb.Transaction, dbs: L.Dbs) -> WatchAdded:
        if txn.get(user + b"|" + watcher, db=dbs.watchers) is not None:
            put(txn, dbs, user, watcher, ts)
            return WatchAdded(True)
        if max_watching is not None and _count(txn, dbs, b"w" + watcher) >= max_watching:
            return WatchAdded(False)
        evicted = None
        if max_watchers is not None and _count(txn, dbs, b"n" + user) >= max_watchers:
            prefix = b"a" + user + b"|"
            with txn.cursor(db=dbs.watch_idx) as cur:
                if cur.set_range(prefix) and cur.key().startswith(prefix):
                    evicted = cur.key()[len(prefix) + 8:]
            if evicted is not None:
                drop(txn, dbs, user, evicted)
        put(txn, dbs, user, watcher, ts)
        return WatchAdded(True, evicted.decode("utf-8") if evicted is not None else None)
    return op


def expire_op(older_than: float) -> Deletion:
    """Drop the pairs refreshed before ``older_than``, oldest first; return how many."""
    def run(txn: lmdb.Transaction, dbs: L.Dbs, limit: int | None,
            counters: object) -> tuple[int, bool]:
        bound = b"t" + L.ts_key(older_than)
        n = 0
        while limit is None or n < limit:
            with txn.cursor(db=dbs.watch_idx) as cur:
                if not cur.set_range(b"t") or cur.key() >= bound:
                    return n, True
                rest = cur.key()[9:]
            user, _, watcher = rest.partition(b"|")
            drop(txn, dbs, user, watcher)
            n += 1
        return n, False
    return Deletion(run)


def index_once(env: lmdb.Environment, dbs: L.Dbs) -> int:
    """Give the pairs of a store written before watcher times the time now, with
    their index entries and counts (blocking; once per store). Returns how many.

    A map too full for the indexes drops those pairs instead (a watcher that is
    not recorded still learns a changed list through ``stale_devices``), so the
    store still opens; returns ``-count`` then.
    """
    with env.begin() as txn:
        if txn.get(WATCH_INDEXED, db=dbs.meta) is not None:
            return 0
        with txn.cursor(db=dbs.watchers) as cur:
            old = [key for key, value in cur if not value]
    try:
        with env.begin(write=True) as txn:
            now = time.time()
            for key in old:
                user, _, watcher = key.partition(b"|")
                txn.delete(key, db=dbs.watchers)
                put(txn, dbs, user, watcher, now)
            txn.put(WATCH_INDEXED, b"1", db=dbs.meta)
        return len(old)
    except lmdb.MapFullError:
        with env.begin(write=True) as txn:
            for key in old:
                txn.delete(key, db=dbs.watchers)
            txn.put(WATCH_INDEXED, b"1", db=dbs.meta)
        return -len(old)


class LmdbWatchersMixin:
    """The watcher methods of :class:`storage.lmdb.LmdbStorage`."""

    _dbs: L.Dbs
    writer: object

    async def _reading(self, fn): ...  # pragma: no cover - provided by LmdbStorage

    async def add_watcher(
        self, user_id: str, watcher_user_id: str, *, ts: float | None = None,
        max_watchers: int | None = None, max_watching: int | None = None,
    ) -> WatchAdded:
        """See :meth:`storage.base.Storage.add_watcher`. A pair already stored with
        this time or a later one costs a read on the loop, no write."""
        user, watcher = check_user_id(user_id), check_user_id(watcher_user_id)
        now = time.time() if ts is None else float(ts)
        key = user + b"|" + watcher
        stored = await self._reading(lambda txn: txn.get(key, db=self._dbs.watchers))
        if stored is not None and L.unpack_f64(stored) >= now:
            return WatchAdded(True)
        return await self.writer.submit(  # type: ignore[attr-defined]
            add_op(user, watcher, now, max_watchers, max_watching), size=2 * len(key))

    async def watchers(self, user_id: str) -> list[str]:
        """See :meth:`storage.base.Storage.watchers`."""
        user = check_user_id(user_id)
        return await self._reading(lambda txn: L.watchers(txn, self._dbs, user))

    async def watching_count(self, user_id: str) -> int:
        """See :meth:`storage.base.Storage.watching_count`."""
        key = b"w" + check_user_id(user_id)
        return await self._reading(lambda txn: _count(txn, self._dbs, key))

    async def expire_watchers(self, older_than: float) -> int:
        """See :meth:`storage.base.Storage.expire_watchers`. Walks the time index:
        cost is proportional to what expires."""
        await trio.lowlevel.checkpoint()
        return await self.writer.submit(  # type: ignore[attr-defined]
            expire_op(float(older_than)), freeing=True)
