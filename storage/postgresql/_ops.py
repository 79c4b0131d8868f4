"""The queue and outbox write ops of the PostgreSQL backend, run by
:class:`~._writer.PgWriter` (the directory's are in :mod:`._ops_keys`).

Each op class validates before it writes (see the writer's docstring) and sets
``value``/``error`` per op. Statements are pipelined (see :class:`~._writer.Tx`):
reads are queued with ``tx.query`` and fetched together, writes are queued with
``tx.cur.execute`` and travel with the ``COMMIT``. Kinds marked ``merge`` run
every consecutive op of the batch as one set-based step: all enqueues of a batch
take five statements, all acks one. Accounted bytes (the ``max_bytes`` bound) are
each value's length plus the fixed per-record overheads below;
:class:`~._writer.Tx` keeps the count.
"""

from __future__ import annotations

import bisect
from collections import Counter
from collections.abc import Sequence

from ..errors import QueueFull
from ._writer import Op, Tx

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

    __slots__ = ("items", "dedupe", "max_queue", "ts", "chain")
    merge = True

    def __init__(self, items: list[tuple[str, int, bytes]], dedupe: bytes | None,
                 max_queue: int | None, ts: float, chain: frozenset = frozenset()) -> None:
        size = sum(len(env) for _, _, env in items)
        adds = size + ITEM_OVERHEAD * len(items)
        if dedupe is not None:
            adds += len(dedupe) + DEDUPE_OVERHEAD
        super().__init__(size + 32 * len(items), adds)
        self.items = items
        self.dedupe = dedupe
        self.max_queue = max_queue
        self.ts = ts
        self.chain = chain  # chain keys (storage._chains): skipped after a refusal on one

    def devices(self) -> list[_Dev]:
        return [(u, d) for u, d, _ in self.items]

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
            blocked = tx.chains.blocking(op.chain) if op.chain else None
            if blocked is not None:
                op.error = blocked
                tx.chains.record(op.chain, blocked)
                continue
            if op.dedupe is not None and op.dedupe in seen:
                continue  # value None: a duplicate
            if op.max_queue is not None:
                per = Counter((u, d) for u, d, _ in op.items)
                full = [k for k, n in per.items() if state[k][1] + n > op.max_queue]
                if full:
                    op.error = QueueFull(f"queue of {full[0]} would exceed {op.max_queue} envelopes")
                    tx.chains.record(op.chain, op.error)
                    continue
            if not tx.admit(op.adds):
                tx.refuse_full(op)
                tx.chains.record(op.chain, op.error)
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
            # looked violates dedupe_pkey, and the writer runs the batch again. In key
            # order, so two writers inserting the same ids wait, never deadlock.
            d_ids, d_ts = zip(*sorted(zip(d_ids, d_ts, strict=True)), strict=True)
            tx.cur.execute("INSERT INTO dedupe (id, ts) SELECT * FROM "
                           "unnest(%b::bytea[], %b::float8[])", (list(d_ids), list(d_ts)))
        if q_seq:
            tx.cur.execute(
                "INSERT INTO queue (user_id, device_id, seq, ts, envelope) SELECT * FROM "
                "unnest(%b::text[], %b::bigint[], %b::bigint[], %b::float8[], %b::bytea[])",
                (q_user, q_dev, q_seq, q_ts, q_env))
            touched = sorted({(u, d) for u, d in zip(q_user, q_dev, strict=True)})
            tx.enqueued.update(touched)
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

    def devices(self) -> list[_Dev]:
        return [(self.user, self.dev)]

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

class PurgeDevice(Op):
    """Delete a device's queue and keys, keep its counter; value: envelopes deleted."""

    __slots__ = ("user", "dev")

    def __init__(self, user: str, dev: int) -> None:
        super().__init__()
        self.user, self.dev = user, dev

    def devices(self) -> list[_Dev]:
        return [(self.user, self.dev)]

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
            tx.changes.outbox.update(d for d, _ in op.entries)
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

