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

from collections.abc import Callable
from typing import Any

import lmdb

from . import _lmdb_layout as L
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


def enqueue_estimate(items: list[tuple[bytes, bytes]], dedupe: bytes | None, psize: int) -> int:
    """Bytes an :func:`enqueue` of ``(devk, envelope)`` items may add (admission check)."""
    total = 64
    for devk, envelope in items:
        qk = len(devk) + 8
        total += record_estimate(qk, 8 + len(envelope), psize) + record_estimate(9 + qk, 0, psize)
    if dedupe is not None:
        total += record_estimate(len(dedupe), 8, psize) + record_estimate(9 + len(dedupe), 0, psize)
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


def enqueue(
    items: list[tuple[bytes, bytes]], dedupe: bytes | None, max_queue: int | None, ts: float,
    chain: frozenset = frozenset(),
) -> Op:
    """Append every ``(devk, envelope)`` atomically; ``None`` if ``dedupe`` is stored. Raises QueueFull.

    ``chain``: the request's chain keys (:mod:`storage._chains`), kept on the op as
    ``op.chain`` for the committer, which skips the op after a refusal on one of them.
    """
    def op(txn: lmdb.Transaction, dbs: L.Dbs) -> list[int] | None:
        if dedupe is not None and txn.get(dedupe, db=dbs.dedupe) is not None:
            return None
        recs: dict[bytes, L.DevRec] = {}
        adding: dict[bytes, int] = {}
        for devk, _ in items:
            if devk not in recs:
                recs[devk] = L.DevRec.load(txn, dbs, devk)
            adding[devk] = adding.get(devk, 0) + 1
        if max_queue is not None:
            for devk, n in adding.items():
                if recs[devk].queue_len + n > max_queue:
                    raise QueueFull(f"a device queue would exceed {max_queue} envelopes")
        tsk, tsv = L.ts_key(ts), L.pack_f64(ts)
        seqs: list[int] = []
        for devk, envelope in items:
            rec = recs[devk]
            rec.last_seq += 1
            rec.queue_len += 1
            qk = L.queue_key(devk, rec.last_seq)
            txn.put(qk, tsv + envelope, db=dbs.queue)
            txn.put(tsk + b"q" + qk, b"", db=dbs.expiry)
            seqs.append(rec.last_seq)
        for devk, rec in recs.items():
            rec.store(txn, dbs, devk)
        if dedupe is not None:
            txn.put(dedupe, tsv, db=dbs.dedupe)
            txn.put(tsk + b"d" + dedupe, b"", db=dbs.expiry)
        return seqs
    op.chain = chain  # type: ignore[attr-defined]
    return op


class Deletion:
    """A freeing op that can also run in pieces, for a map too full to delete
    everything in one transaction (see :mod:`storage._group_commit`).

    ``run(txn, dbs, limit)`` deletes at most ``limit`` records (all if ``None``),
    leaving a consistent state (a prefix of what the whole op deletes), and returns
    ``(count, done)``. Called as an op, it runs whole and returns ``count``; the
    answer of an op run in pieces is the sum of their counts.
    """

    __slots__ = ("run",)

    def __init__(self, run: Callable[[lmdb.Transaction, L.Dbs, int | None], tuple[int, bool]]):
        self.run = run

    def __call__(self, txn: lmdb.Transaction, dbs: L.Dbs) -> int:
        return self.run(txn, dbs, None)[0]

    def piece(self, limit: int) -> Op:
        """An op deleting at most ``limit`` records: ``(txn, dbs) -> (count, done)``."""
        return lambda txn, dbs: self.run(txn, dbs, limit)


def _delete_queue_range(
    txn: lmdb.Transaction, dbs: L.Dbs, devk: bytes, up_to_seq: int | None, limit: int | None,
) -> int:
    """Delete the device's items with seq <= up_to_seq (all if None), with their index
    entries, lowest seq first, at most ``limit`` of them (None: no bound)."""
    gone = 0
    with txn.cursor(db=dbs.queue) as cur:
        cur.set_range(devk)
        # cur.key() is b"" once the cursor runs off the end (our keys are never empty).
        while (key := cur.key()) and len(key) == len(devk) + 8 and key.startswith(devk):
            if up_to_seq is not None and L.unpack_u64(key[-8:]) > up_to_seq:
                break
            if limit is not None and gone >= limit:
                break
            txn.delete(L.ts_key(L.unpack_f64(cur.value())) + b"q" + key, db=dbs.expiry)
            cur.delete()  # moves to the next item
            gone += 1
    return gone


def ack(devk: bytes, up_to_seq: int) -> Deletion:
    """Delete the device's envelopes up to ``up_to_seq``; return how many went."""
    def run(txn: lmdb.Transaction, dbs: L.Dbs, limit: int | None) -> tuple[int, bool]:
        if up_to_seq < 1:
            return 0, True
        gone = _delete_queue_range(txn, dbs, devk, min(up_to_seq, 2**64 - 1), limit)
        if gone:
            rec = L.DevRec.load(txn, dbs, devk)
            rec.queue_len -= gone
            rec.store(txn, dbs, devk)
        return gone, limit is None or gone < limit
    return Deletion(run)


def _delete_prefix(txn: lmdb.Transaction, db: lmdb._Database, prefix: bytes) -> None:
    with txn.cursor(db=db) as cur:
        cur.set_range(prefix)
        while (key := cur.key()) and key.startswith(prefix):
            cur.delete()


def purge_device(devk: bytes) -> Deletion:
    """Delete the device's queue and keys (keeping its seq counter); return the
    envelopes deleted. In pieces: the queue goes first, the keys with the last piece."""
    def run(txn: lmdb.Transaction, dbs: L.Dbs, limit: int | None) -> tuple[int, bool]:
        gone = _delete_queue_range(txn, dbs, devk, None, limit)
        rec = L.DevRec.load(txn, dbs, devk)
        if limit is not None and gone >= limit:
            rec.queue_len -= gone
            rec.store(txn, dbs, devk)
            return gone, False
        _delete_prefix(txn, dbs.otk, devk)
        _delete_prefix(txn, dbs.claimed, devk)
        txn.delete(devk, db=dbs.fallback)
        if rec.last_seq:  # keep the seq counter: seqs are never reused
            rec.queue_len = rec.otk_count = 0
            rec.store(txn, dbs, devk)
        else:
            txn.delete(devk, db=dbs.devices)
        return gone, True
    return Deletion(run)


def expire(older_than: float) -> Deletion:
    """Delete envelopes and dedupe ids enqueued before ``older_than`` (oldest first);
    return the envelopes deleted."""
    def run(txn: lmdb.Transaction, dbs: L.Dbs, limit: int | None) -> tuple[int, bool]:
        bound = L.ts_key(older_than)
        drops: dict[bytes, int] = {}
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
                    if txn.delete(rest, db=dbs.queue):
                        devk = rest[:-8]
                        drops[devk] = drops.get(devk, 0) + 1
                else:
                    txn.delete(rest, db=dbs.dedupe)
                cur.delete()
                n += 1
        for devk, k in drops.items():
            rec = L.DevRec.load(txn, dbs, devk)
            rec.queue_len -= k
            rec.store(txn, dbs, devk)
        return sum(drops.values()), done
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
