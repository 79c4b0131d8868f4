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

from .._quota import check_quota
from ..base import QueueQuota
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
TAG_SEP = "\x1f"

CHARGE_CTES = """,
            sh AS (SELECT g.user_id, g.device_id, x.tag, sum(g.len) AS b
                   FROM gone g, unnest(string_to_array(g.charges, chr(31))) AS x(tag)
                   WHERE g.charges IS NOT NULL GROUP BY g.user_id, g.device_id, x.tag),
            us AS (UPDATE queue_shares t SET bytes = t.bytes - sh.b FROM sh
                   WHERE t.user_id = sh.user_id AND t.device_id = sh.device_id AND t.tag = sh.tag),
            uc AS (UPDATE queue_charges t SET bytes = t.bytes - c.b
                   FROM (SELECT tag, sum(b) AS b FROM sh GROUP BY tag) AS c WHERE t.tag = c.tag)"""
"""CTEs that take the bytes of the deleted items of a ``gone`` CTE (columns user_id,
device_id, len, charges) off ``queue_shares`` and ``queue_charges``."""

DEVICE_CTES = """,
            cnt AS (SELECT user_id, device_id, count(*) AS c, sum(len) AS b FROM gone
                    GROUP BY user_id, device_id),
            upd AS (UPDATE devices t SET queue_len = t.queue_len - cnt.c,
                                         queue_bytes = t.queue_bytes - cnt.b FROM cnt
                    WHERE t.user_id = cnt.user_id AND t.device_id = cnt.device_id)"""
"""CTEs that take the deleted items of ``gone`` off the ``devices`` counters."""


class _BatchUsage:
    """The byte counts of :mod:`storage._quota` for one batch of enqueues: read from
    the database before the batch, plus what the batch's accepted requests add."""

    def __init__(self, state: dict[_Dev, list[int]], accounts: dict[str, int],
                 charges: dict[str, int], shares: dict[tuple[str, int, str], int]) -> None:
        self.state, self.accounts, self.charges, self.shares = state, accounts, charges, shares

    def device(self, user_id: str, device_id: int) -> int:
        return self.state[(user_id, device_id)][2]

    def account(self, user_id: str) -> int:
        return self.accounts.get(user_id, 0)

    def charge(self, tag: str) -> int:
        return self.charges.get(tag, 0)

    def share(self, user_id: str, device_id: int, tag: str) -> int:
        return self.shares.get((user_id, device_id, tag), 0)

    def add(self, items: list[tuple[str, int, bytes]], tags: tuple[str, ...]) -> None:
        for u, d, env in items:
            n = len(env)
            self.state[(u, d)][2] += n
            self.accounts[u] = self.accounts.get(u, 0) + n
            for tag in tags:
                self.charges[tag] = self.charges.get(tag, 0) + n
                self.shares[(u, d, tag)] = self.shares.get((u, d, tag), 0) + n


def _clamp(n: int) -> int:
    return max(-1, min(int(n), MAX_BIGINT))


class Enqueue(Op):
    """One :class:`~storage.base.EnqueueRequest`; value: seqs, or None (duplicate)."""

    __slots__ = ("items", "dedupe", "max_queue", "ts", "chain", "charges", "quota")
    merge = True

    def __init__(self, items: list[tuple[str, int, bytes]], dedupe: bytes | None,
                 max_queue: int | None, ts: float, charges: tuple[str, ...] = (),
                 quota: QueueQuota | None = None, chain: frozenset = frozenset()) -> None:
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
        self.charges = charges
        self.quota = quota

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
                "RETURNING user_id, device_id, last_seq, queue_len, queue_bytes",
                ([u for u, _ in devs], [d for _, d in devs]))
        if wanted:
            # an id only a handoff brought (imported) is a duplicate for its users alone
            dupes = tx.query(
                "SELECT d.id, d.imported, array_remove(array_agg(l.user_id), NULL) FROM dedupe d "
                "LEFT JOIN dedupe_users l ON l.id = d.id AND d.imported "
                "WHERE d.id = ANY(%b::bytea[]) GROUP BY d.id, d.imported", (wanted,))
        quota_reads = cls._quota_reads(tx, reqs, devs)
        # One round trip for all reads (and whatever was queued before them).
        state: dict[_Dev, list[int]] = {}
        if counters is not None:
            state = {(u, d): [s, n, b] for u, d, s, n, b in counters.fetchall()}
        accounts_cur, charges_cur, shares_cur = quota_reads
        usage = _BatchUsage(
            state,
            {} if accounts_cur is None else {u: int(n) for u, n in accounts_cur.fetchall()},
            {} if charges_cur is None else {t: int(n) for t, n in charges_cur.fetchall()},
            {} if shares_cur is None else {(u, d, t): int(n)
                                           for u, d, t, n in shares_cur.fetchall()})
        seen: set[bytes] = set()
        imported: dict[bytes, set[str]] = {}
        if dupes is not None:
            for d_id, is_imported, linked in dupes.fetchall():
                if is_imported:
                    imported[bytes(d_id)] = set(linked)
                else:
                    seen.add(bytes(d_id))
        promoted: list[bytes] = []
        q_user: list[str] = []
        q_dev: list[int] = []
        q_seq: list[int] = []
        q_ts: list[float] = []
        q_env: list[bytes] = []
        q_charges: list[str | None] = []
        d_ids: list[bytes] = []
        d_ts: list[float] = []
        links: set[tuple[str, bytes]] = set()
        for op in reqs:
            blocked = tx.chains.blocking(op.chain) if op.chain else None
            if blocked is not None:
                op.error = blocked
                tx.chains.record(op.chain, blocked)
                continue
            if op.dedupe is not None and op.dedupe in seen:
                continue  # value None: a duplicate
            if op.dedupe in imported and {u for u, _, _ in op.items} <= imported[op.dedupe]:
                continue  # a duplicate for the users the handoff brought the id for
            if op.max_queue is not None:
                per = Counter((u, d) for u, d, _ in op.items)
                full = [k for k, n in per.items() if state[k][1] + n > op.max_queue]
                if full:
                    op.error = QueueFull(f"queue of {full[0]} would exceed {op.max_queue} envelopes")
                    tx.chains.record(op.chain, op.error)
                    continue
            try:
                check_quota([(u, d, len(env)) for u, d, env in op.items], op.charges, op.quota,
                            usage)
            except QueueFull as exc:
                op.error = exc
                continue
            if not tx.admit(op.adds):
                tx.refuse_full(op)
                tx.chains.record(op.chain, op.error)
                continue
            usage.add(op.items, op.charges)
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
                q_charges.append(TAG_SEP.join(op.charges) if op.charges else None)
            if op.dedupe is not None:
                seen.add(op.dedupe)
                if op.dedupe in imported:
                    promoted.append(op.dedupe)  # stored now: a duplicate for everyone
                else:
                    d_ids.append(op.dedupe)
                    d_ts.append(op.ts)
                links.update((u, op.dedupe) for u, _, _ in op.items)
            op.value = seqs
        if d_ids:
            # The unique constraint decides: an id another process committed after we
            # looked violates dedupe_pkey, and the writer runs the batch again. In key
            # order, so two writers inserting the same ids wait, never deadlock.
            d_ids, d_ts = zip(*sorted(zip(d_ids, d_ts, strict=True)), strict=True)
            tx.cur.execute("INSERT INTO dedupe (id, ts) SELECT * FROM "
                           "unnest(%b::bytea[], %b::float8[])", (list(d_ids), list(d_ts)))
        if promoted:
            tx.cur.execute("UPDATE dedupe SET imported = false WHERE id = ANY(%b::bytea[])",
                           (sorted(promoted),))
        if links:  # the handoff moves each id with the users it queued copies for
            l_users, l_ids = zip(*sorted(links), strict=True)
            tx.cur.execute("INSERT INTO dedupe_users (user_id, id) SELECT * FROM "
                           "unnest(%b::text[], %b::bytea[]) ON CONFLICT DO NOTHING",
                           (list(l_users), list(l_ids)))
        if q_seq:
            tx.cur.execute(
                "INSERT INTO queue (user_id, device_id, seq, ts, envelope, charges) SELECT * "
                "FROM unnest(%b::text[], %b::bigint[], %b::bigint[], %b::float8[], %b::bytea[], "
                "%b::text[])", (q_user, q_dev, q_seq, q_ts, q_env, q_charges))
            cls._add_charges(tx, reqs)
            touched = sorted({(u, d) for u, d in zip(q_user, q_dev, strict=True)})
            tx.enqueued.update(touched)
            tx.cur.execute(
                "UPDATE devices AS t SET last_seq = v.s, queue_len = v.n, queue_bytes = v.b "
                "FROM unnest(%b::text[], %b::bigint[], %b::bigint[], %b::bigint[], "
                "%b::bigint[]) AS v(u, d, s, n, b) WHERE t.user_id = v.u AND t.device_id = v.d",
                ([u for u, _ in touched], [d for _, d in touched],
                 [state[k][0] for k in touched], [state[k][1] for k in touched],
                 [state[k][2] for k in touched]))

    @staticmethod
    def _quota_reads(tx: Tx, reqs: Sequence[Enqueue], devs: list[_Dev]) -> list:
        """Queue the reads the batch's quotas need: ``[accounts, charges, shares]``
        cursors (``None`` where no request needs them)."""
        quotas = [op.quota for op in reqs if op.quota is not None]
        tags = sorted({t for op in reqs if op.quota is not None for t in op.charges})
        accounts = charges = shares = None
        if any(q.account_bytes is not None for q in quotas):
            accounts = tx.query(
                "SELECT user_id, sum(queue_bytes) FROM devices WHERE user_id = ANY(%b::text[]) "
                "GROUP BY user_id", (sorted({u for u, _ in devs}),))
        if tags and any(q.charge_bytes is not None for q in quotas):
            charges = tx.query("SELECT tag, bytes FROM queue_charges WHERE tag = ANY(%b::text[])",
                               (tags,))
        if tags and any(q.share_bytes is not None for q in quotas):
            shares = tx.query(
                "SELECT s.user_id, s.device_id, s.tag, s.bytes FROM queue_shares s JOIN "
                "unnest(%b::text[], %b::bigint[]) AS v(u, d) ON s.user_id = v.u AND "
                "s.device_id = v.d WHERE s.tag = ANY(%b::text[])",
                ([u for u, _ in devs], [d for _, d in devs], tags))
        return [accounts, charges, shares]

    @staticmethod
    def _add_charges(tx: Tx, reqs: Sequence[Enqueue]) -> None:
        """Queue the upserts of ``queue_charges`` / ``queue_shares`` for the accepted
        requests (in key order)."""
        by_tag: Counter[str] = Counter()
        by_share: Counter[tuple[str, int, str]] = Counter()
        for op in reqs:
            if op.value is None or not op.charges:
                continue
            for u, d, env in op.items:
                for tag in op.charges:
                    by_tag[tag] += len(env)
                    by_share[(u, d, tag)] += len(env)
        if not by_tag:
            return
        tags = sorted(by_tag)
        tx.cur.execute(
            "INSERT INTO queue_charges (tag, bytes) SELECT * FROM unnest(%b::text[], "
            "%b::bigint[]) ON CONFLICT (tag) DO UPDATE SET bytes = queue_charges.bytes "
            "+ EXCLUDED.bytes", (tags, [by_tag[t] for t in tags]))
        keys = sorted(by_share)
        tx.cur.execute(
            "INSERT INTO queue_shares (user_id, device_id, tag, bytes) SELECT * FROM "
            "unnest(%b::text[], %b::bigint[], %b::text[], %b::bigint[]) ON CONFLICT "
            "(user_id, device_id, tag) DO UPDATE SET bytes = queue_shares.bytes + EXCLUDED.bytes",
            ([k[0] for k in keys], [k[1] for k in keys], [k[2] for k in keys],
             [by_share[k] for k in keys]))


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
                     RETURNING q.user_id, q.device_id, q.seq, octet_length(q.envelope) AS n,
                               octet_length(q.envelope) AS len, q.charges)""" + DEVICE_CTES
            + CHARGE_CTES + """
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
                WITH gone AS (DELETE FROM queue WHERE user_id = %(u)s AND device_id = %(d)s
                              RETURNING user_id, device_id, octet_length(envelope) + %(io)s AS n,
                                        octet_length(envelope) AS len, charges)""" + CHARGE_CTES
                + """,
                k AS (DELETE FROM otk WHERE user_id = %(u)s AND device_id = %(d)s
                      RETURNING octet_length(key_id) + octet_length(key) + %(ko)s AS n),
                c AS (DELETE FROM otk_claimed WHERE user_id = %(u)s AND device_id = %(d)s
                      RETURNING octet_length(key_id) AS n),
                f AS (DELETE FROM fallback_keys WHERE user_id = %(u)s AND device_id = %(d)s
                      RETURNING octet_length(key_id) + octet_length(key) + %(ko)s AS n),
                z AS (UPDATE devices SET queue_len = 0, queue_bytes = 0
                      WHERE user_id = %(u)s AND device_id = %(d)s)
                SELECT (SELECT count(*) FROM gone),
                       (SELECT coalesce(sum(n), 0) FROM gone) + (SELECT coalesce(sum(n), 0) FROM k)
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
                              RETURNING user_id, device_id, octet_length(envelope) + %(io)s AS n,
                                        octet_length(envelope) AS len, charges)""" + DEVICE_CTES
                + CHARGE_CTES + """,
                dd AS (DELETE FROM dedupe WHERE ts < %(t)s RETURNING octet_length(id) + %(do)s AS n)
                SELECT (SELECT count(*) FROM gone),
                       (SELECT coalesce(sum(n), 0) FROM gone) + (SELECT coalesce(sum(n), 0) FROM dd)
                """, {"t": op.before, "io": ITEM_OVERHEAD, "do": DEDUPE_OVERHEAD})
            tx.free(int(freed))
            op.value = count
            tx.cur.execute("DELETE FROM queue_shares WHERE bytes <= 0")
            tx.cur.execute("DELETE FROM queue_charges WHERE bytes <= 0")


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

