"""The write ops of the PostgreSQL backend, run by :class:`~._writer.PgWriter`.

Each op class validates before it writes (see the writer's docstring) and sets
``value``/``error`` per op. Statements are pipelined (see :class:`~._writer.Tx`):
reads are queued with ``tx.query`` and fetched together, writes are queued with
``tx.cur.execute`` and travel with the ``COMMIT``. Kinds marked ``merge`` run every consecutive op of the
batch as one set-based step: all enqueues of a batch take five statements, all
acks one. Accounted bytes (the ``max_bytes`` bound) are each value's length plus
the fixed per-record overheads below; :class:`~._writer.Tx` keeps the count.
"""

from __future__ import annotations

import bisect
from collections import Counter
from collections.abc import Sequence

from ..errors import DuplicateKey, QueueFull, StaleVersion
from ._writer import LookAgain, Op, Tx

ITEM_OVERHEAD = 48
DEDUPE_OVERHEAD = 32
LIST_OVERHEAD = 32
WATCHER_OVERHEAD = 32
KEY_OVERHEAD = 32
OUTBOX_OVERHEAD = 48
MAX_BIGINT = 2**63 - 1

_Dev = tuple[str, int]


def _clamp(n: int) -> int:
    return max(-1, min(int(n), MAX_BIGINT))


class Enqueue(Op):
    """One :class:`~storage.base.EnqueueRequest`; value: seqs, or None (duplicate)."""

    __slots__ = ("items", "dedupe", "max_queue", "ts")
    merge = True

    def __init__(self, items: list[tuple[str, int, bytes]], dedupe: bytes | None,
                 max_queue: int | None, ts: float) -> None:
        size = sum(len(env) for _, _, env in items)
        adds = size + ITEM_OVERHEAD * len(items)
        if dedupe is not None:
            adds += len(dedupe) + DEDUPE_OVERHEAD
        super().__init__(size + 32 * len(items), adds)
        self.items = items
        self.dedupe = dedupe
        self.max_queue = max_queue
        self.ts = ts

    @classmethod
    def run(cls, tx: Tx, ops: Sequence[Op]) -> None:
        reqs: Sequence[Enqueue] = ops  # type: ignore[assignment]
        devs = sorted({(u, d) for op in reqs for u, d, _ in op.items})
        wanted = list({op.dedupe for op in reqs if op.dedupe is not None})
        counters = dupes = None
        if devs:
            # Create missing counter rows and lock them all, in key order (no deadlocks
            # between processes); the no-op update makes RETURNING show existing rows.
            counters = tx.query(
                "INSERT INTO devices (user_id, device_id) "
                "SELECT u, d FROM unnest(%b::text[], %b::bigint[]) AS v(u, d) ORDER BY u, d "
                "ON CONFLICT (user_id, device_id) DO UPDATE SET last_seq = devices.last_seq "
                "RETURNING user_id, device_id, last_seq, queue_len",
                ([u for u, _ in devs], [d for _, d in devs]))
        if wanted:
            dupes = tx.query("SELECT id FROM dedupe WHERE id = ANY(%b::bytea[])", (wanted,))
        # One round trip for both reads (and whatever was queued before them).
        state: dict[_Dev, list[int]] = {}
        if counters is not None:
            state = {(u, d): [s, n] for u, d, s, n in counters.fetchall()}
        seen: set[bytes] = set()
        if dupes is not None:
            seen = {bytes(r[0]) for r in dupes.fetchall()}
        q_user: list[str] = []
        q_dev: list[int] = []
        q_seq: list[int] = []
        q_ts: list[float] = []
        q_env: list[bytes] = []
        d_ids: list[bytes] = []
        d_ts: list[float] = []
        for op in reqs:
            if op.dedupe is not None and op.dedupe in seen:
                continue  # value None: a duplicate
            if op.max_queue is not None:
                per = Counter((u, d) for u, d, _ in op.items)
                full = [k for k, n in per.items() if state[k][1] + n > op.max_queue]
                if full:
                    op.error = QueueFull(f"queue of {full[0]} would exceed {op.max_queue} envelopes")
                    continue
            if not tx.admit(op.adds):
                tx.refuse_full(op)
                continue
            seqs = []
            for u, d, env in op.items:
                st = state[(u, d)]
                st[0] += 1
                st[1] += 1
                seqs.append(st[0])
                q_user.append(u)
                q_dev.append(d)
                q_seq.append(st[0])
                q_ts.append(op.ts)
                q_env.append(env)
            if op.dedupe is not None:
                seen.add(op.dedupe)
                d_ids.append(op.dedupe)
                d_ts.append(op.ts)
            op.value = seqs
        if d_ids:
            # The unique constraint decides: an id another process committed after we
            # looked violates dedupe_pkey, and the writer runs the batch again.
            tx.cur.execute("INSERT INTO dedupe (id, ts) SELECT * FROM "
                           "unnest(%b::bytea[], %b::float8[])", (d_ids, d_ts))
        if q_seq:
            tx.cur.execute(
                "INSERT INTO queue (user_id, device_id, seq, ts, envelope) SELECT * FROM "
                "unnest(%b::text[], %b::bigint[], %b::bigint[], %b::float8[], %b::bytea[])",
                (q_user, q_dev, q_seq, q_ts, q_env))
            touched = sorted({(u, d) for u, d in zip(q_user, q_dev, strict=True)})
            tx.cur.execute(
                "UPDATE devices AS t SET last_seq = v.s, queue_len = v.n FROM unnest("
                "%b::text[], %b::bigint[], %b::bigint[], %b::bigint[]) AS v(u, d, s, n) "
                "WHERE t.user_id = v.u AND t.device_id = v.d",
                ([u for u, _ in touched], [d for _, d in touched],
                 [state[k][0] for k in touched], [state[k][1] for k in touched]))


class Ack(Op):
    """A cumulative ack; value: how many items it deleted."""

    __slots__ = ("user", "dev", "seq")
    merge = True

    def __init__(self, user: str, dev: int, seq: int) -> None:
        super().__init__()
        self.user, self.dev, self.seq = user, dev, _clamp(seq)

    @classmethod
    def run(cls, tx: Tx, ops: Sequence[Op]) -> None:
        acks: Sequence[Ack] = ops  # type: ignore[assignment]
        rows = tx.fetch("""
            WITH a AS (SELECT u, d, max(s) AS s FROM unnest(%b::text[], %b::bigint[], %b::bigint[])
                       AS v(u, d, s) GROUP BY u, d),
            gone AS (DELETE FROM queue q USING a
                     WHERE q.user_id = a.u AND q.device_id = a.d AND q.seq <= a.s
                     RETURNING q.user_id, q.device_id, q.seq, octet_length(q.envelope) AS n),
            cnt AS (SELECT user_id, device_id, count(*) AS c FROM gone GROUP BY user_id, device_id),
            upd AS (UPDATE devices t SET queue_len = t.queue_len - cnt.c FROM cnt
                    WHERE t.user_id = cnt.user_id AND t.device_id = cnt.device_id)
            SELECT user_id, device_id, seq, n FROM gone""",
            ([a.user for a in acks], [a.dev for a in acks], [a.seq for a in acks]))
        deleted: dict[_Dev, list[int]] = {}
        for u, d, seq, n in rows:
            deleted.setdefault((u, d), []).append(seq)
            tx.free(n + ITEM_OVERHEAD)
        for seqs in deleted.values():
            seqs.sort()
        done: dict[_Dev, int] = {}  # the highest seq acked so far in list order
        for a in acks:
            key = (a.user, a.dev)
            prev = done.get(key, 0)
            seqs = deleted.get(key, [])
            if a.seq > prev:
                a.value = bisect.bisect_right(seqs, a.seq) - bisect.bisect_right(seqs, prev)
                done[key] = a.seq
            else:
                a.value = 0


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
            if old:
                tx.free(old[0][1] + LIST_OVERHEAD)


class AddWatcher(Op):
    """Record that ``watcher`` fetched ``user``'s device list (idempotent)."""

    __slots__ = ("user", "watcher")

    def __init__(self, user: str, watcher: str) -> None:
        n = len(user.encode()) + len(watcher.encode())
        super().__init__(n, n + WATCHER_OVERHEAD)
        self.user, self.watcher = user, watcher

    @classmethod
    def run(cls, tx: Tx, ops: Sequence[Op]) -> None:
        for op in ops:
            assert isinstance(op, AddWatcher)
            if not tx.admit(op.adds):
                tx.refuse_full(op)
                continue
            if not tx.fetch("INSERT INTO watchers (user_id, watcher) VALUES (%s, %s) "
                            "ON CONFLICT DO NOTHING RETURNING 1", (op.user, op.watcher)):
                tx.free(op.adds)


class PurgeDevice(Op):
    """Delete a device's queue and keys, keep its counter; value: envelopes deleted."""

    __slots__ = ("user", "dev")

    def __init__(self, user: str, dev: int) -> None:
        super().__init__()
        self.user, self.dev = user, dev

    @classmethod
    def run(cls, tx: Tx, ops: Sequence[Op]) -> None:
        for op in ops:
            assert isinstance(op, PurgeDevice)
            [(count, freed)] = tx.fetch("""
                WITH q AS (DELETE FROM queue WHERE user_id = %(u)s AND device_id = %(d)s
                           RETURNING octet_length(envelope) + %(io)s AS n),
                k AS (DELETE FROM otk WHERE user_id = %(u)s AND device_id = %(d)s
                      RETURNING octet_length(key_id) + octet_length(key) + %(ko)s AS n),
                c AS (DELETE FROM otk_claimed WHERE user_id = %(u)s AND device_id = %(d)s
                      RETURNING octet_length(key_id) AS n),
                f AS (DELETE FROM fallback_keys WHERE user_id = %(u)s AND device_id = %(d)s
                      RETURNING octet_length(key_id) + octet_length(key) + %(ko)s AS n),
                z AS (UPDATE devices SET queue_len = 0 WHERE user_id = %(u)s AND device_id = %(d)s)
                SELECT (SELECT count(*) FROM q),
                       (SELECT coalesce(sum(n), 0) FROM q) + (SELECT coalesce(sum(n), 0) FROM k)
                       + (SELECT coalesce(sum(n), 0) FROM c) + (SELECT coalesce(sum(n), 0) FROM f)
                """, {"u": op.user, "d": op.dev, "io": ITEM_OVERHEAD, "ko": KEY_OVERHEAD})
            tx.free(int(freed))
            op.value = count


class Expire(Op):
    """Delete queued items and dedupe ids older than ``before``; value: items deleted."""

    __slots__ = ("before",)

    def __init__(self, before: float) -> None:
        super().__init__()
        self.before = before

    @classmethod
    def run(cls, tx: Tx, ops: Sequence[Op]) -> None:
        for op in ops:
            assert isinstance(op, Expire)
            [(count, freed)] = tx.fetch("""
                WITH gone AS (DELETE FROM queue WHERE ts < %(t)s
                              RETURNING user_id, device_id, octet_length(envelope) + %(io)s AS n),
                cnt AS (SELECT user_id, device_id, count(*) AS c FROM gone
                        GROUP BY user_id, device_id),
                upd AS (UPDATE devices t SET queue_len = t.queue_len - cnt.c FROM cnt
                        WHERE t.user_id = cnt.user_id AND t.device_id = cnt.device_id),
                dd AS (DELETE FROM dedupe WHERE ts < %(t)s RETURNING octet_length(id) + %(do)s AS n)
                SELECT (SELECT count(*) FROM gone),
                       (SELECT coalesce(sum(n), 0) FROM gone) + (SELECT coalesce(sum(n), 0) FROM dd)
                """, {"t": op.before, "io": ITEM_OVERHEAD, "do": DEDUPE_OVERHEAD})
            tx.free(int(freed))
            op.value = count


class OutboxPut(Op):
    """Store ``(dest, payload)`` entries atomically; value: their ids, increasing."""

    __slots__ = ("entries",)

    def __init__(self, entries: list[tuple[str, bytes]]) -> None:
        size = sum(len(d.encode()) + len(p) for d, p in entries)
        super().__init__(size, size + OUTBOX_OVERHEAD * len(entries))
        self.entries = entries

    @classmethod
    def run(cls, tx: Tx, ops: Sequence[Op]) -> None:
        for op in ops:
            assert isinstance(op, OutboxPut)
            if not tx.admit(op.adds):
                tx.refuse_full(op)
                continue
            ids = sorted(r[0] for r in tx.fetch(
                "SELECT nextval('outbox_ids') FROM generate_series(1, %s)", (len(op.entries),)))
            tx.cur.execute(
                "INSERT INTO outbox (id, dest, payload) SELECT * FROM "
                "unnest(%b::bigint[], %b::text[], %b::bytea[])",
                (ids, [d for d, _ in op.entries], [p for _, p in op.entries]))
            op.value = ids


class OutboxRetry(Op):
    """Count one more failed attempt (no-op if the entry is gone)."""

    __slots__ = ("oid",)

    def __init__(self, oid: int) -> None:
        super().__init__()
        self.oid = oid

    @classmethod
    def run(cls, tx: Tx, ops: Sequence[Op]) -> None:
        for op in ops:
            assert isinstance(op, OutboxRetry)
            tx.cur.execute("UPDATE outbox SET attempts = attempts + 1 WHERE id = %s", (op.oid,))


class OutboxDelete(Op):
    """Delete outbox entries by id (gone ones skipped)."""

    __slots__ = ("ids",)

    def __init__(self, ids: list[int]) -> None:
        super().__init__()
        self.ids = ids

    @classmethod
    def run(cls, tx: Tx, ops: Sequence[Op]) -> None:
        for op in ops:
            assert isinstance(op, OutboxDelete)
            [(freed,)] = tx.fetch("""
                WITH g AS (DELETE FROM outbox WHERE id = ANY(%b::bigint[])
                           RETURNING octet_length(dest) + octet_length(payload) + %s AS n)
                SELECT coalesce(sum(n), 0) FROM g""", (op.ids, OUTBOX_OVERHEAD))
            tx.free(int(freed))

