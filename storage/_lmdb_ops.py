"""The write operations of :class:`storage.lmdb.LmdbStorage`, run by the group-commit writer.

Each op is a plain function ``(txn, dbs) -> result`` that runs in the writer's
thread inside the batch's single write transaction. Every op follows the same
two-phase shape so that a domain error cannot leave half an op in the batch:

1. **validate**: only reads (which see the earlier ops of the same batch);
   raises :class:`~storage.errors.StaleVersion`, ``DuplicateKey`` or
   ``QueueFull`` before anything is written;
2. **apply**: only writes, which can fail only with ``lmdb.Error`` (map full,
   disk full, I/O), and that aborts the whole batch.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Container
from typing import Any

import lmdb

from . import _lmdb_layout as L
from ._lmdb_counters import Counters
from ._quota import check_quota
from .base import QueueQuota
from .errors import DuplicateKey, QueueFull, StaleVersion

Op = Callable[[lmdb.Transaction, L.Dbs], Any]

_NODE_HDR = 8
_PAGE_HDR = 16


def record_estimate(klen: int, vlen: int, psize: int) -> int:
    """Bytes one LMDB record of a ``klen``-byte key and ``vlen``-byte value may take:
    twice its node (B-tree leaves may be half full), or its overflow pages if the
    value does not fit on a leaf (more than about half a page)."""
    node = _NODE_HDR + klen + vlen
    if node <= (psize - _PAGE_HDR) // 2 - 2:
        return 2 * node
    pages = -(-(vlen + _PAGE_HDR) // psize)
    return pages * psize + 2 * (_NODE_HDR + klen + 8)


def enqueue_estimate(
    items: list[tuple[bytes, bytes]], dedupe: bytes | None, psize: int, tags_len: int = 0
) -> int:
    """Bytes an :func:`enqueue` of ``(devk, envelope)`` items may add (admission check);
    ``tags_len``: bytes of the NUL-joined charge tags (0: none)."""
    total = 64 + 4 * record_estimate(tags_len + 64, 8, psize)
    for devk, envelope in items:
        qk = len(devk) + 8
        total += (record_estimate(qk, 8 + len(envelope), psize)
                  + record_estimate(9 + qk, tags_len, psize))
        if tags_len:
            total += record_estimate(qk + tags_len, 8, psize)
    if dedupe is not None:
        users = {L.user_of(devk) for devk, _ in items}
        links = sum(len(u) + 1 for u in users)
        total += record_estimate(len(dedupe), 8, psize) + record_estimate(9 + len(dedupe), links,
                                                                          psize)
        total += sum(record_estimate(len(u) + 1 + len(dedupe), 0, psize) for u in users)
    return total


def put_device_list(user: bytes, version: int, blob: bytes) -> Op:
    """Store ``blob`` as ``user``'s list ``version``. Raises StaleVersion unless it grows."""
    def op(txn: lmdb.Transaction, dbs: L.Dbs) -> None:
        old = txn.get(user, db=dbs.lists)
        if old is not None and L.unpack_u64(old[:8]) >= version:
            raise StaleVersion(f"stored device list version {L.unpack_u64(old[:8])} >= {version}")
        txn.put(user, L.pack_u64(version) + blob, db=dbs.lists)
    return op


def add_watcher(key: bytes) -> Op:
    """Record the ``user | watcher`` pair (idempotent)."""
    def op(txn: lmdb.Transaction, dbs: L.Dbs) -> None:
        txn.put(key, b"", db=dbs.watchers, overwrite=False)
    return op


def add_one_time_keys(devk: bytes, keys: list[tuple[bytes, bytes]]) -> Op:
    """Add ``(key_id, key)`` pairs; return the count. Raises DuplicateKey (stored or claimed id)."""
    def op(txn: lmdb.Transaction, dbs: L.Dbs) -> int:
        seen: set[bytes] = set()
        for key_id, _ in keys:
            k = devk + key_id
            if (key_id in seen or txn.get(k, db=dbs.otk) is not None
                    or txn.get(k, db=dbs.claimed) is not None):
                raise DuplicateKey(f"one-time key id {key_id!r} already used for this device")
            seen.add(key_id)
        rec = L.DevRec.load(txn, dbs, devk)
        for key_id, key in keys:
            txn.put(devk + key_id, key, db=dbs.otk)
        rec.otk_count += len(keys)
        rec.store(txn, dbs, devk)
        return rec.otk_count
    return op


def set_fallback_key(devk: bytes, key_id: bytes, key: bytes) -> Op:
    """Replace the device's fallback key."""
    def op(txn: lmdb.Transaction, dbs: L.Dbs) -> None:
        txn.put(devk, L.pack_fallback(key_id, key), db=dbs.fallback)
    return op


def claim_key(devk: bytes) -> Op:
    """Take the lowest one-time key (its id is kept as claimed), else the fallback; ``None`` if neither."""
    def op(txn: lmdb.Transaction, dbs: L.Dbs) -> tuple[str, bytes, bool] | None:
        with txn.cursor(db=dbs.otk) as cur:
            if cur.set_range(devk) and cur.key().startswith(devk):
                k, key = cur.item()
                cur.delete()
                txn.put(k, b"", db=dbs.claimed)
                rec = L.DevRec.load(txn, dbs, devk)
                rec.otk_count -= 1
                rec.store(txn, dbs, devk)
                return (k[len(devk):].decode("utf-8"), key, False)
        fb = txn.get(devk, db=dbs.fallback)
        if fb is None:
            return None
        key_id, key = L.unpack_fallback(fb)
        return (key_id, key, True)
    return op


@functools.lru_cache(maxsize=4096)
def _encoded_tags(charges: tuple[str, ...]) -> tuple[list[bytes], bytes]:
    """The tags as UTF-8 and NUL-joined (memoized: a sender's messages share them;
    the list is never changed by its users)."""
    tags = [t.encode() for t in charges]
    return tags, b"\0".join(tags)


@functools.lru_cache(maxsize=4096)
def _tag_map(charges: tuple[str, ...]) -> dict[str, bytes]:
    """Each tag of ``charges`` to its UTF-8 (memoized as :func:`_encoded_tags`; never
    changed by its users)."""
    return dict(zip(charges, _encoded_tags(charges)[0], strict=True))


class _TxnUsage:
    """The byte counts of :mod:`storage._quota`, read from the batch's
    :class:`~storage._lmdb_counters.Counters` (so they include the earlier ops of
    the same batch)."""

    __slots__ = ("c",)

    def __init__(self, counters: Counters) -> None:
        self.c = counters

    def device(self, user_id: str, device_id: int) -> int:
        return self.c.dev(L.dev_key(user_id.encode(), device_id)).queue_bytes

    def account(self, user_id: str) -> int:
        return self.c.account(user_id.encode())

    def charge(self, tag: str) -> int:
        return self.c.charge(tag.encode())

    def share(self, user_id: str, device_id: int, tag: str) -> int:
        return self.c.share(L.dev_key(user_id.encode(), device_id) + tag.encode())


class _OneUsage:
    """:class:`_TxnUsage` of a request of one copy, for queue ``devk``: no encoding."""

    __slots__ = ("c", "devk", "rec", "tags")

    def __init__(self, counters: Counters, devk: bytes, rec: L.DevRec,
                 tags: dict[str, bytes]) -> None:
        self.c, self.devk, self.rec, self.tags = counters, devk, rec, tags

    def device(self, user_id: str, device_id: int) -> int:
        return self.rec.queue_bytes

    def account(self, user_id: str) -> int:
        return self.c.account(L.user_of(self.devk))

    def charge(self, tag: str) -> int:
        return self.c.charge(self.tags[tag])

    def share(self, user_id: str, device_id: int, tag: str) -> int:
        return self.c.share(self.devk + self.tags[tag])


def enqueue(
    items: list[tuple[bytes, bytes]], dedupe: bytes | None, max_queue: int | None, ts: float,
    charges: tuple[str, ...] = (), quota: QueueQuota | None = None,
    sizes: list[tuple[str, int, int]] | None = None, chain: frozenset = frozenset(),
) -> Op:
    """Append every ``(devk, envelope)`` atomically; ``None`` if ``dedupe`` is stored.
    Raises QueueFull (``max_queue`` or a byte bound of ``quota``; ``sizes`` are the
    items as ``(user_id, device_id, len(envelope))``, needed with a quota).

    The op is ``(txn, dbs, counters=None) -> seqs``: with the batch's
    :class:`~storage._lmdb_counters.Counters` it updates the counters there (the
    committer flushes them), without it in the transaction. A queue this request
    would take above the quota's lowest share bound has its shares counted first
    (:meth:`~storage._lmdb_counters.Counters.count_shares`).

    ``chain``: the request's chain keys (:mod:`storage._chains`), kept on the op as
    ``op.chain`` for the committer, which skips the op after a refusal on one of them;
    ``op.tags_len``: the bytes of the joined tags (for :func:`enqueue_estimate`).
    """
    tags, packed_tags = _encoded_tags(charges)
    floor = quota.share_floor if tags and quota is not None else None

    users = sorted({L.user_of(devk) for devk, _ in items})

    def op(txn: lmdb.Transaction, dbs: L.Dbs, counters: Counters | None = None) -> list[int] | None:
        held = None if dedupe is None else txn.get(dedupe, db=dbs.dedupe)
        if dedupe is not None and L.dedupe_duplicate(txn, dbs, held, dedupe, users):
            return None
        c = Counters(txn, dbs) if counters is None else counters
        recs = {devk: c.dev(devk) for devk, _ in items}
        if max_queue is not None:
            adding: dict[bytes, int] = {}
            for devk, _ in items:
                adding[devk] = adding.get(devk, 0) + 1
            for devk, n in adding.items():
                if recs[devk].queue_len + n > max_queue:
                    raise QueueFull(f"a device queue would exceed {max_queue} envelopes")
        if quota is not None:
            assert sizes is not None, "a quota needs the sizes"
            if len(items) == 1:
                devk = items[0][0]
                rec = recs[devk]
                if (floor is not None and not rec.shares_counted
                        and rec.queue_bytes + sizes[0][2] > floor):
                    c.count_shares(devk)  # before the check reads a share
                usage: _TxnUsage | _OneUsage = _OneUsage(c, devk, rec, _tag_map(charges))
            else:
                if floor is not None:
                    added = sum(n for _, _, n in sizes)
                    for devk, rec in recs.items():
                        if not rec.shares_counted and rec.queue_bytes + added > floor:
                            c.count_shares(devk)
                usage = _TxnUsage(c)
            check_quota(sizes, charges, quota, usage)
        tsk, tsv = L.ts_key(ts), L.pack_f64(ts)
        seqs: list[int] = []
        per_dev: dict[bytes, int] = {}
        queue, expiry = dbs.queue, dbs.expiry
        for devk, envelope in items:
            rec = recs[devk]
            rec.last_seq += 1
            rec.queue_len += 1
            rec.queue_bytes += len(envelope)
            qk = L.queue_key(devk, rec.last_seq)
            txn.put(qk, tsv + envelope, db=queue)
            txn.put(tsk + b"q" + qk, packed_tags, db=expiry)
            per_dev[devk] = per_dev.get(devk, 0) + len(envelope)
            seqs.append(rec.last_seq)
        for devk, n in per_dev.items():
            c.add_account(L.user_of(devk), n)
        if tags:
            for devk, n in per_dev.items():
                c.add_tags(devk, tags, n, recs[devk].shares_counted)
        if dedupe is not None and held is None:
            txn.put(dedupe, tsv, db=dbs.dedupe)
            txn.put(tsk + b"d" + dedupe, b"\0".join(users), db=dbs.expiry)
            for user in users:  # the handoff moves the id with each of its users
                txn.put(L.dedupe_link(user, tsk, dedupe), b"", db=dbs.dedupe_user)
        elif dedupe is not None and held is not None:  # an imported id: now for everyone
            txn.put(dedupe, held[:8], db=dbs.dedupe)
            L.link_dedupe(txn, dbs, dedupe, L.ts_key(L.unpack_f64(held)) + b"d" + dedupe, users)
        if counters is None:
            c.flush()
        return seqs
    op.chain = chain  # type: ignore[attr-defined]
    op.counters = True  # type: ignore[attr-defined]
    op.tags_len = len(packed_tags)  # type: ignore[attr-defined]
    return op


class Freed:
    """The bytes of deleted queue items, applied to the counters once per op."""

    __slots__ = ("items", "by_dev", "by_tag")

    def __init__(self) -> None:
        self.items: dict[bytes, int] = {}
        self.by_dev: dict[bytes, int] = {}
        self.by_tag: dict[tuple[bytes, bytes], int] = {}  # (devk, packed tags) -> bytes

    def note(self, qk: bytes, value: bytes, tags: bytes | None) -> None:
        """Count one deleted item: queue key ``qk``, stored value ``value``, and
        ``tags``, the value of its ``expiry`` entry (its charge tags, NUL-joined)."""
        devk, n = qk[:-8], len(value) - 8
        self.items[devk] = self.items.get(devk, 0) + 1
        self.by_dev[devk] = self.by_dev.get(devk, 0) + n
        if tags:
            key = (devk, tags)
            self.by_tag[key] = self.by_tag.get(key, 0) + n

    def apply(self, c: Counters) -> int:
        """Update the device records, ``accounts``, ``charges`` and ``shares`` (of
        the queues whose shares are counted; a queue left empty is counted no
        more); return the items deleted."""
        counted = set()
        for devk, k in self.items.items():
            rec = c.dev(devk)
            if rec.shares_counted:
                counted.add(devk)
            rec.queue_len -= k
            rec.queue_bytes = max(0, rec.queue_bytes - self.by_dev[devk])
            if rec.queue_len <= 0:
                rec.shares_counted = False
        self.apply_totals(c, counted)
        return sum(self.items.values())

    def apply_totals(self, c: Counters, counted: Container[bytes]) -> None:
        """Update ``accounts``, ``charges`` and the ``shares`` of the queues in
        ``counted`` (not the device records)."""
        for devk, n in self.by_dev.items():
            c.add_account(L.user_of(devk), -n)
        for (devk, tags), n in self.by_tag.items():
            c.add_tags(devk, tags.split(b"\0"), -n, devk in counted)


class Deletion:
    """A freeing op that can also run in pieces, for a map too full to delete
    everything in one transaction (see :mod:`storage._group_commit`).

    ``run(txn, dbs, limit, counters)`` deletes at most ``limit`` records (all if
    ``None``), leaving a consistent state (a prefix of what the whole op deletes),
    and returns ``(count, done)``; ``counters``: the batch's
    :class:`~storage._lmdb_counters.Counters`, or ``None`` (the op flushes its own).
    Called as an op, it runs whole and returns ``count``; the answer of an op run
    in pieces is the sum of their counts. ``counters`` (the attribute) tells the
    committer whether to pass the batch's counters (else it flushes them first).
    """

    __slots__ = ("run", "counters")

    def __init__(self, run: Callable[[lmdb.Transaction, L.Dbs, int | None, Counters | None],
                                     tuple[int, bool]], counters: bool = False):
        self.run = run
        self.counters = counters

    def __call__(self, txn: lmdb.Transaction, dbs: L.Dbs, counters: Counters | None = None) -> int:
        return self.run(txn, dbs, None, counters)[0]

    def piece(self, limit: int) -> Op:
        """An op deleting at most ``limit`` records: ``(txn, dbs) -> (count, done)``."""
        return lambda txn, dbs: self.run(txn, dbs, limit, None)


def _delete_queue_range(
    txn: lmdb.Transaction, dbs: L.Dbs, devk: bytes, up_to_seq: int | None, limit: int | None,
    freed: Freed,
) -> int:
    """Delete the device's items with seq <= up_to_seq (all if None), with their index
    entries, lowest seq first, at most ``limit`` of them (None: no bound); count them
    in ``freed``."""
    gone = 0
    expiry = dbs.expiry
    with txn.cursor(db=dbs.queue) as cur:
        cur.set_range(devk)
        # cur.key() is b"" once the cursor runs off the end (our keys are never empty).
        while (key := cur.key()) and len(key) == len(devk) + 8 and key.startswith(devk):
            if up_to_seq is not None and L.unpack_u64(key[-8:]) > up_to_seq:
                break
            if limit is not None and gone >= limit:
                break
            value = cur.value()
            tags = txn.pop(L.ts_key(L.unpack_f64(value)) + b"q" + key, db=expiry)
            freed.note(key, value, tags)
            cur.delete()  # moves to the next item
            gone += 1
    return gone


def ack(devk: bytes, up_to_seq: int) -> Deletion:
    """Delete the device's envelopes up to ``up_to_seq``; return how many went."""
    def run(txn: lmdb.Transaction, dbs: L.Dbs, limit: int | None,
            counters: Counters | None) -> tuple[int, bool]:
        if up_to_seq < 1:
            return 0, True
        c = Counters(txn, dbs) if counters is None else counters
        freed = Freed()
        gone = _delete_queue_range(txn, dbs, devk, min(up_to_seq, 2**64 - 1), limit, freed)
        freed.apply(c)
        if counters is None:
            c.flush()
        return gone, limit is None or gone < limit
    return Deletion(run, counters=True)


def _delete_prefix(txn: lmdb.Transaction, db: lmdb._Database, prefix: bytes) -> None:
    with txn.cursor(db=db) as cur:
        cur.set_range(prefix)
        while (key := cur.key()) and key.startswith(prefix):
            cur.delete()


def purge_device(devk: bytes) -> Deletion:
    """Delete the device's queue and keys (keeping its seq counter); return the
    envelopes deleted. In pieces: the queue goes first, the keys with the last piece."""
    def run(txn: lmdb.Transaction, dbs: L.Dbs, limit: int | None,
            counters: Counters | None) -> tuple[int, bool]:
        freed = Freed()
        gone = _delete_queue_range(txn, dbs, devk, None, limit, freed)
        c = Counters(txn, dbs)
        freed.apply(c)
        c.flush()
        rec = L.DevRec.load(txn, dbs, devk)
        if limit is not None and gone >= limit:
            return gone, False
        _delete_prefix(txn, dbs.otk, devk)
        _delete_prefix(txn, dbs.claimed, devk)
        txn.delete(devk, db=dbs.fallback)
        if rec.last_seq:  # keep the seq counter: seqs are never reused
            rec.queue_len = rec.otk_count = rec.queue_bytes = 0
            rec.store(txn, dbs, devk)
        else:
            txn.delete(devk, db=dbs.devices)
        return gone, True
    return Deletion(run)


def expire(older_than: float) -> Deletion:
    """Delete envelopes and dedupe ids enqueued before ``older_than`` (oldest first);
    return the envelopes deleted."""
    def run(txn: lmdb.Transaction, dbs: L.Dbs, limit: int | None,
            counters: Counters | None) -> tuple[int, bool]:
        bound = L.ts_key(older_than)
        freed = Freed()
        done = True
        n = 0
        with txn.cursor(db=dbs.expiry) as cur:
            cur.first()
            while (key := cur.key()) and key[:8] < bound:
                if limit is not None and n >= limit:
                    done = False
                    break
                kind, rest = key[8:9], key[9:]
                if kind == b"q":
                    value = txn.pop(rest, db=dbs.queue)
                    if value is not None:
                        freed.note(rest, value, cur.value())
                else:
                    txn.delete(rest, db=dbs.dedupe)
                    for user in filter(None, cur.value().split(b"\0")):
                        txn.delete(L.dedupe_link(user, key[:8], rest), db=dbs.dedupe_user)
                cur.delete()
                n += 1
        c = Counters(txn, dbs)
        gone = freed.apply(c)
        c.flush()
        return gone, done
    return Deletion(run)


def outbox_put_many(entries: list[tuple[bytes, bytes]]) -> Op:
    """Append outbox entries ``(dest, payload)`` atomically; return their new ids, in order."""
    def op(txn: lmdb.Transaction, dbs: L.Dbs) -> list[int]:
        raw = txn.get(L.OUTBOX_LAST, db=dbs.meta)
        oid = L.unpack_u64(raw) if raw is not None else 0
        ids = []
        for dest, payload in entries:
            oid += 1
            txn.put(L.pack_u64(oid), L.pack_outbox(0, dest, payload), db=dbs.outbox)
            txn.put(L.outbox_dest_key(dest, oid), b"", db=dbs.outbox_dest)
            ids.append(oid)
        if ids:
            txn.put(L.OUTBOX_LAST, L.pack_u64(oid), db=dbs.meta)
        return ids
    return op


def outbox_retry(outbox_id: int) -> Op:
    """Count one more failed attempt of the entry (gone: nothing)."""
    def op(txn: lmdb.Transaction, dbs: L.Dbs) -> None:
        key = L.pack_u64(outbox_id)
        raw = txn.get(key, db=dbs.outbox)
        if raw is not None:
            e = L.unpack_outbox(outbox_id, raw)
            txn.put(key, L.pack_outbox(min(e.attempts + 1, 2**32 - 1), e.dest.encode(), e.payload), db=dbs.outbox)
    return op


def outbox_delete_many(outbox_ids: list[int]) -> Op:
    """Delete the entries and their index keys (those gone: nothing)."""
    def op(txn: lmdb.Transaction, dbs: L.Dbs) -> None:
        for outbox_id in outbox_ids:
            key = L.pack_u64(outbox_id)
            raw = txn.get(key, db=dbs.outbox)
            if raw is not None:
                dest = L.unpack_outbox(outbox_id, raw).dest.encode()
                txn.delete(L.outbox_dest_key(dest, outbox_id), db=dbs.outbox_dest)
                txn.delete(key, db=dbs.outbox)
    return op
