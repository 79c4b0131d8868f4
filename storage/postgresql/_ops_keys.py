"""The directory write ops of the PostgreSQL backend (one-time keys, fallback keys,
device lists, watchers), run by :class:`~._writer.PgWriter`; see :mod:`._ops`
for how ops validate, answer and pipeline their statements."""

from __future__ import annotations

from collections.abc import Sequence

from ..base import WatchAdded
from ..errors import DuplicateKey, StaleVersion
from ._ops import KEY_OVERHEAD, LIST_OVERHEAD, WATCHER_OVERHEAD
from ._writer import LookAgain, Op, Tx


class Claim(Op):
    """Take one key of a device; value: ``(key_id, key, is_fallback)`` or None."""

    __slots__ = ("user", "dev")
    merge = True

    def __init__(self, user: str, dev: int) -> None:
        super().__init__()
        self.user, self.dev = user, dev

    @classmethod
    def run(cls, tx: Tx, ops: Sequence[Op]) -> None:
        for op in ops:
            op.value = cls._claim(tx, op)  # type: ignore[arg-type]

    @staticmethod
    def _claim(tx: Tx, op: Claim) -> tuple[str, bytes, bool] | None:
        params = {"u": op.user, "d": op.dev}
        rows = tx.fetch("""
            WITH c AS (DELETE FROM otk WHERE (user_id, device_id, key_id) IN (
                           SELECT user_id, device_id, key_id FROM otk
                           WHERE user_id = %(u)s AND device_id = %(d)s
                           ORDER BY key_id LIMIT 1 FOR UPDATE SKIP LOCKED)
                       RETURNING user_id, device_id, key_id, key),
            t AS (INSERT INTO otk_claimed (user_id, device_id, key_id)
                  SELECT user_id, device_id, key_id FROM c)
            SELECT key_id, key FROM c""", params)
        if rows:
            key_id, key = bytes(rows[0][0]), bytes(rows[0][1])
            tx.free(len(key))  # the key id stays, as a tombstone
            return (key_id.decode(), key, False)
        [(busy, fb_id, fb_key)] = tx.fetch("""
            SELECT EXISTS (SELECT 1 FROM otk WHERE user_id = %(u)s AND device_id = %(d)s),
                   f.key_id, f.key
            FROM (SELECT 1) AS one LEFT JOIN fallback_keys f
                 ON f.user_id = %(u)s AND f.device_id = %(d)s""", params)
        if busy:
            # Every key left is locked by another process's unfinished claim: an empty
            # answer under contention means "look again", not "none left". Roll back
            # (releasing the keys this batch holds, so two batches never wait on each
            # other) and run the batch again after a short random pause.
            raise LookAgain("one-time keys are locked by another process's claims")
        return None if fb_id is None else (bytes(fb_id).decode(), bytes(fb_key), True)


class AddKeys(Op):
    """Add one-time keys (ids distinct within the call); value: the count held now."""

    __slots__ = ("user", "dev", "keys")

    def __init__(self, user: str, dev: int, keys: list[tuple[bytes, bytes]]) -> None:
        size = sum(len(k) + len(v) for k, v in keys)
        super().__init__(size, size + KEY_OVERHEAD * len(keys))
        self.user, self.dev, self.keys = user, dev, keys

    @classmethod
    def run(cls, tx: Tx, ops: Sequence[Op]) -> None:
        for op in ops:
            op.value = cls._add(tx, op)  # type: ignore[arg-type]

    @staticmethod
    def _add(tx: Tx, op: AddKeys) -> int | None:
        ids = [k for k, _ in op.keys]
        params = {"u": op.user, "d": op.dev, "ids": ids}
        if ids:
            dup = tx.fetch("""
                SELECT key_id FROM otk WHERE user_id = %(u)s AND device_id = %(d)s
                    AND key_id = ANY(%(ids)b::bytea[])
                UNION ALL
                SELECT key_id FROM otk_claimed WHERE user_id = %(u)s AND device_id = %(d)s
                    AND key_id = ANY(%(ids)b::bytea[])
                LIMIT 1""", params)
            if dup:
                op.error = DuplicateKey(f"one-time key id {bytes(dup[0][0]).decode()!r} "
                                        "already used for this device")
                return None
            if not tx.admit(op.adds):
                tx.refuse_full(op)
                return None
            [(added,)] = tx.fetch("""
                WITH ins AS (INSERT INTO otk (user_id, device_id, key_id, key)
                             SELECT %(u)s, %(d)s, k, v
                             FROM unnest(%(ids)b::bytea[], %(keys)b::bytea[]) AS x(k, v)
                             ON CONFLICT DO NOTHING RETURNING 1)
                SELECT count(*) FROM ins""", {**params, "keys": [v for _, v in op.keys]})
            if added != len(ids):
                raise LookAgain("a key id was added by another process")
        [(count,)] = tx.fetch(
            "SELECT count(*) FROM otk WHERE user_id = %(u)s AND device_id = %(d)s", params)
        return count


class SetFallback(Op):
    """Replace a device's fallback key."""

    __slots__ = ("user", "dev", "key_id", "key")

    def __init__(self, user: str, dev: int, key_id: bytes, key: bytes) -> None:
        super().__init__(len(key_id) + len(key), len(key_id) + len(key) + KEY_OVERHEAD)
        self.user, self.dev, self.key_id, self.key = user, dev, key_id, key

    @classmethod
    def run(cls, tx: Tx, ops: Sequence[Op]) -> None:
        for op in ops:
            assert isinstance(op, SetFallback)
            if not tx.admit(op.adds):
                tx.refuse_full(op)
                continue
            [(old,)] = tx.fetch("""
                WITH old AS (SELECT octet_length(key_id) + octet_length(key) AS n
                             FROM fallback_keys WHERE user_id = %s AND device_id = %s)
                INSERT INTO fallback_keys (user_id, device_id, key_id, key) VALUES (%s, %s, %s, %s)
                ON CONFLICT (user_id, device_id) DO UPDATE SET key_id = EXCLUDED.key_id,
                    key = EXCLUDED.key
                RETURNING (SELECT n FROM old)""",
                (op.user, op.dev, op.user, op.dev, op.key_id, op.key))
            if old is not None:
                tx.free(old + KEY_OVERHEAD)


class PutDeviceList(Op):
    """Store a device list if its version grows (the rule is the upsert's WHERE)."""

    __slots__ = ("user", "version", "blob")

    def __init__(self, user: str, version: int, blob: bytes) -> None:
        super().__init__(len(blob), len(blob) + LIST_OVERHEAD)
        self.user, self.version, self.blob = user, version, blob

    @classmethod
    def run(cls, tx: Tx, ops: Sequence[Op]) -> None:
        for op in ops:
            assert isinstance(op, PutDeviceList)
            old = tx.fetch("SELECT version, octet_length(blob) FROM device_lists "
                           "WHERE user_id = %s FOR UPDATE", (op.user,))
            if old and int(old[0][0]) >= op.version:
                op.error = StaleVersion(f"stored device list version {old[0][0]} >= {op.version}")
                continue
            if not tx.admit(op.adds):
                tx.refuse_full(op)
                continue
            stored = tx.fetch("""
                INSERT INTO device_lists (user_id, version, blob) VALUES (%s, %s::numeric, %s)
                ON CONFLICT (user_id) DO UPDATE SET version = EXCLUDED.version, blob = EXCLUDED.blob
                WHERE device_lists.version < EXCLUDED.version
                RETURNING 1""", (op.user, op.version, op.blob))
            if not stored:
                raise LookAgain("another process stored a device list meanwhile")
            tx.changes.lists.add(op.user)
            if old:
                tx.free(old[0][1] + LIST_OVERHEAD)


class AddWatcher(Op):
    """Record or refresh that ``watcher`` fetched ``user``'s device list at ``ts``,
    within the bounds of :meth:`storage.base.Storage.add_watcher`; value: a
    :class:`~storage.base.WatchAdded`.

    Several relay processes adding watchers of one user at once may each drop
    one: the drop takes every watcher beyond the bound, so the count returns to
    ``max_watchers`` with the next new pair."""

    __slots__ = ("user", "watcher", "ts", "max_watchers", "max_watching")

    def __init__(self, user: str, watcher: str, ts: float, max_watchers: int | None,
                 max_watching: int | None) -> None:
        n = len(user.encode()) + len(watcher.encode())
        super().__init__(n, n + WATCHER_OVERHEAD)
        self.user, self.watcher, self.ts = user, watcher, ts
        self.max_watchers, self.max_watching = max_watchers, max_watching

    @classmethod
    def run(cls, tx: Tx, ops: Sequence[Op]) -> None:
        for op in ops:
            assert isinstance(op, AddWatcher)
            if not tx.admit(op.adds):
                tx.refuse_full(op)
                continue
            op.value = cls._add(tx, op)

    @staticmethod
    def _add(tx: Tx, op: AddWatcher) -> WatchAdded:
        p = {"u": op.user, "w": op.watcher, "t": op.ts, "m": op.max_watchers,
             "o": WATCHER_OVERHEAD}
        if tx.fetch("UPDATE watchers SET ts = greatest(ts, %(t)s) "
                    "WHERE user_id = %(u)s AND watcher = %(w)s RETURNING 1", p):
            tx.free(op.adds)
            return WatchAdded(True)
        if op.max_watching is not None:
            [(n,)] = tx.fetch("SELECT count(*) FROM watchers WHERE watcher = %(w)s", p)
            if n >= op.max_watching:
                tx.free(op.adds)
                return WatchAdded(False)
        evicted = None
        if op.max_watchers is not None:
            gone = tx.fetch(
                "DELETE FROM watchers WHERE user_id = %(u)s AND watcher IN ("
                " SELECT watcher FROM watchers WHERE user_id = %(u)s ORDER BY ts, watcher"
                " LIMIT greatest(0, (SELECT count(*) FROM watchers WHERE user_id = %(u)s)"
                " - %(m)s + 1)) RETURNING watcher, ts,"
                " octet_length(user_id) + octet_length(watcher) + %(o)s", p)
            tx.free(sum(int(n) for _, _, n in gone))
            if gone:
                evicted = min(gone, key=lambda g: (g[1], g[0]))[0]
        if not tx.fetch("INSERT INTO watchers (user_id, watcher, ts) VALUES (%(u)s, %(w)s, %(t)s) "
                        "ON CONFLICT (user_id, watcher) DO UPDATE SET ts = greatest("
                        "watchers.ts, EXCLUDED.ts) RETURNING (xmax = 0)", p)[0][0]:
            tx.free(op.adds)  # another process stored it meanwhile
        return WatchAdded(True, evicted)


class ExpireWatchers(Op):
    """Drop the watcher pairs refreshed before ``before``; value: how many."""

    __slots__ = ("before",)

    def __init__(self, before: float) -> None:
        super().__init__()
        self.before = before

    @classmethod
    def run(cls, tx: Tx, ops: Sequence[Op]) -> None:
        for op in ops:
            assert isinstance(op, ExpireWatchers)
            [(count, freed)] = tx.fetch(
                "WITH d AS (DELETE FROM watchers WHERE ts < %s RETURNING"
                " octet_length(user_id) + octet_length(watcher) + %s AS n)"
                " SELECT count(*), coalesce(sum(n), 0) FROM d", (op.before, WATCHER_OVERHEAD))
            tx.free(int(freed))
            op.value = int(count)
