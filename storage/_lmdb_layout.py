"""LMDB key/value layout of :class:`storage.lmdb.LmdbStorage` and the read helpers.

Named sub-databases (``devk`` = ``user_id UTF-8 | "|" | device_id u32 BE``; all
integers big-endian so that byte order is numeric order):

===========  =================================  =====================================
db           key                                value
===========  =================================  =====================================
lists        user_id                            version u64 | signed blob
otk          devk | key_id                      public key
claimed      devk | key_id                      empty (a claimed id is never reused)
fallback     devk                               len(key_id) u16 | key_id | key
queue        devk | seq u64                     ts f64 | envelope
devices      devk                               last_seq u64 | queue_len u64 | otk_count u64
                                                | queue_bytes u64 | shares_counted bool (1 byte)
accounts     user_id                            queue bytes u64 of all the user's devices
charges      charge tag                         queue bytes u64 charged to the tag
shares       devk | charge tag                  queue bytes u64 of the tag in one queue
                                                (kept only while ``shares_counted``)
qcharge      queue key (stores written before   the item's charge tags (moved into
             tags moved into ``expiry``)        ``expiry`` at open; empty after it)
correspond   user_id | "|" | other user_id      empty   (user_id sent to other)
invites      SHA-256 of an invite token         expires_at f64
dedupe       dedupe id                          ts f64 (| b"i": only import_user stored it)
dedupe_user  user_id | "|" | ts_key | dedupe id empty   (the ids linked to a user, in time
                                                order: they move with its home)
expiry       ts_key | b"q" | queue key          the item's charge tags, NUL-separated (time
                                                index for :meth:`expire`; empty: no tags)
             ts_key | b"d" | dedupe id          the id's linked user ids, NUL-separated
                                                (empty: none, or written before links)
outbox       outbox_id u64                      attempts u32 | len(dest) u16 | dest | payload
outbox_dest  len(dest) u16 | dest | outbox_id   empty   (per-destination index of ``outbox``)
watchers     user_id | "|" | watcher user_id    last refresh f64 (who fetched user_id's list;
                                                indexes in ``watch_idx``: storage._lmdb_watchers)
media        media_id (32 bytes)                see storage._lmdb_media (blob record)
media_time   b"c"/b"p" | ts_key | media_id      empty   (time index for media_expire)
meta         b"format" / b"outbox_last"         b"1" / u64
             b"outbox_indexed"                  b"1" once ``outbox_dest`` covers ``outbox``
             b"bump"                            u64 (see storage._group_commit)
             b"bytes_indexed"                   b"1" once queue bytes are counted
===========  =================================  =====================================

Queue bytes are envelope lengths (``accounts``, ``charges``, ``shares`` and
``devices.queue_bytes``), kept exact by every enqueue and deletion; a store written
before they existed gets them counted once at open (``bytes_indexed``); zero
counters are deleted. The ops of one group-commit batch update them in memory and
write each once (:mod:`storage._lmdb_counters`). An item's charge tags are the value
of its ``expiry`` entry, which every deletion of the item removes anyway; a store
that kept them in ``qcharge`` has them moved there at open.

``shares`` are kept per device queue only while the queue's record says
``shares_counted``: a queue starts uncounted, is counted once (a scan of its items'
tags, :meth:`storage._lmdb_counters.Counters.count_shares`) when an enqueue with a share bound would take it above
the lowest of those bounds (the only time the quota check reads a share), and goes
back to uncounted when it is empty (every share is 0 then). Online devices keep
their queues nearly empty, so their messages update no ``shares`` record at all;
a scan costs one pass over a queue that grew by at least the share bound since it
was last empty. A record written before this flag existed reads as counted.

``devices.last_seq`` survives acks and purges, so seqs are never reused;
``meta.outbox_last`` does the same for outbox ids. ``ts_key`` encodes a float so
that byte order is numeric order (also for negative values).
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass

import lmdb

from .base import OutboxEntry, QueueItem

FORMAT = b"1"
DB_NAMES = (
    "lists", "otk", "claimed", "fallback", "queue", "devices", "dedupe", "expiry", "outbox",
    "meta", "watchers", "media", "media_time", "outbox_dest", "accounts", "charges", "shares",
    "qcharge", "correspond", "invites", "dedupe_user", "watch_idx",
)
OUTBOX_LAST = b"outbox_last"
BYTES_INDEXED = b"bytes_indexed"
OUTBOX_INDEXED = b"outbox_indexed"

_U64 = struct.Struct(">Q")
_F64 = struct.Struct(">d")
_DEVREC = struct.Struct(">QQQQ?")
_DEVREC_V2 = struct.Struct(">QQQQ")
_DEVREC_V1 = struct.Struct(">QQQ")
_OUTBOX_HDR = struct.Struct(">IH")
_FB_HDR = struct.Struct(">H")


@dataclass(frozen=True, slots=True)
class Dbs:
    """Handles of the named sub-databases of one environment."""

    lists: lmdb._Database
    otk: lmdb._Database
    claimed: lmdb._Database
    fallback: lmdb._Database
    queue: lmdb._Database
    devices: lmdb._Database
    dedupe: lmdb._Database
    expiry: lmdb._Database
    outbox: lmdb._Database
    meta: lmdb._Database
    watchers: lmdb._Database
    media: lmdb._Database
    media_time: lmdb._Database
    outbox_dest: lmdb._Database
    accounts: lmdb._Database
    charges: lmdb._Database
    shares: lmdb._Database
    qcharge: lmdb._Database
    correspond: lmdb._Database
    invites: lmdb._Database
    dedupe_user: lmdb._Database
    watch_idx: lmdb._Database

    @classmethod
    def open(cls, env: lmdb.Environment) -> Dbs:
        """Create/open every sub-database and check the format marker (blocking).

        An environment written before ``outbox_dest`` existed gets that index
        built from its ``outbox`` here, once, in the same transaction.
        """
        with env.begin(write=True) as txn:
            handles = {name: env.open_db(name.encode(), txn=txn) for name in DB_NAMES}
            fmt = txn.get(b"format", db=handles["meta"])
            if fmt is None:
                txn.put(b"format", FORMAT, db=handles["meta"])
            elif fmt != FORMAT:
                raise ValueError(f"unsupported LMDB storage format {fmt!r}")
            if txn.get(OUTBOX_INDEXED, db=handles["meta"]) is None:
                with txn.cursor(db=handles["outbox"]) as cur:
                    for key, value in cur:
                        entry = unpack_outbox(unpack_u64(key), value)
                        txn.put(outbox_dest_key(entry.dest.encode(), entry.outbox_id), b"",
                                db=handles["outbox_dest"])
                txn.put(OUTBOX_INDEXED, b"1", db=handles["meta"])
            dbs = cls(**handles)
            if txn.get(BYTES_INDEXED, db=dbs.meta) is None:
                count_queue_bytes(txn, dbs)
                txn.put(BYTES_INDEXED, b"1", db=dbs.meta)
            if txn.stat(dbs.qcharge)["entries"]:
                move_charge_tags(txn, dbs)
        return dbs

    def all(self) -> tuple[lmdb._Database, ...]:
        """Every handle, in :data:`DB_NAMES` order."""
        return tuple(getattr(self, name) for name in DB_NAMES)


# -- encoders


def dev_key(user: bytes, device_id: int) -> bytes:
    """``devk``: the UTF-8 user id, ``|``, the device id as u32 BE."""
    return user + b"|" + device_id.to_bytes(4, "big")


def queue_key(devk: bytes, seq: int) -> bytes:
    """Key of one queued envelope: ``devk | seq u64 BE``."""
    return devk + _U64.pack(seq)


def ts_key(ts: float) -> bytes:
    """8 bytes whose unsigned order is the numeric order of ``ts``."""
    (n,) = _U64.unpack(_F64.pack(ts))
    n = n ^ 0xFFFF_FFFF_FFFF_FFFF if n >> 63 else n | (1 << 63)
    return _U64.pack(n)


def pack_u64(n: int) -> bytes:
    """``n`` as 8 big-endian bytes."""
    return _U64.pack(n)


def unpack_u64(raw: bytes) -> int:
    """Inverse of :func:`pack_u64`."""
    return _U64.unpack(raw)[0]


def pack_f64(x: float) -> bytes:
    """``x`` as an 8-byte big-endian IEEE double."""
    return _F64.pack(x)


def unpack_f64(raw: bytes) -> float:
    """The double in the first 8 bytes of ``raw``."""
    return _F64.unpack(raw[:8])[0]


@dataclass(slots=True)
class DevRec:
    """The ``devices`` record of one device queue."""

    last_seq: int = 0
    queue_len: int = 0
    otk_count: int = 0
    queue_bytes: int = 0
    shares_counted: bool = False

    @classmethod
    def load(cls, txn: lmdb.Transaction, dbs: Dbs, devk: bytes) -> DevRec:
        """The device's record, or zeros if it has none (a record written before
        ``queue_bytes`` existed reads with 0 there until :func:`count_queue_bytes`)."""
        return cls.unpack(txn.get(devk, db=dbs.devices))

    @classmethod
    def unpack(cls, raw: bytes | None) -> DevRec:
        """The record stored as ``raw`` (zeros for ``None``)."""
        if raw is None:
            return cls()
        if len(raw) == _DEVREC.size:
            return cls(*_DEVREC.unpack(raw))
        if len(raw) == _DEVREC_V1.size:  # older layouts kept every share: counted
            return cls(*_DEVREC_V1.unpack(raw), shares_counted=True)
        return cls(*_DEVREC_V2.unpack(raw), shares_counted=True)

    def pack(self) -> bytes:
        """The stored form of the record (33 bytes)."""
        return _DEVREC.pack(self.last_seq, self.queue_len, self.otk_count, self.queue_bytes,
                            self.shares_counted)

    def store(self, txn: lmdb.Transaction, dbs: Dbs, devk: bytes) -> None:
        """Write the record (write transaction only)."""
        txn.put(devk, self.pack(), db=dbs.devices)


def user_of(devk: bytes) -> bytes:
    """The UTF-8 user id of a ``devk``."""
    return devk[:-5]


def get_u64(txn: lmdb.Transaction, db: lmdb._Database, key: bytes) -> int:
    """The u64 counter stored at ``key`` (0 if none)."""
    raw = txn.get(key, db=db)
    return 0 if raw is None else unpack_u64(raw)


def add_u64(txn: lmdb.Transaction, db: lmdb._Database, key: bytes, delta: int) -> None:
    """Add ``delta`` to the counter at ``key``; a counter that reaches 0 (or would go
    below it) is deleted."""
    if not delta:
        return
    n = get_u64(txn, db, key) + delta
    if n > 0:
        txn.put(key, pack_u64(n), db=db)
    else:
        txn.delete(key, db=db)


def count_queue_bytes(txn: lmdb.Transaction, dbs: Dbs) -> None:
    """Count the envelope bytes of every queue into ``devices`` and ``accounts``
    (once, for a store written before byte accounting; items then have no charges)."""
    per_dev: dict[bytes, int] = {}
    with txn.cursor(db=dbs.queue) as cur:
        for key, value in cur:
            devk = key[:-8]
            per_dev[devk] = per_dev.get(devk, 0) + len(value) - 8
    per_user: dict[bytes, int] = {}
    for devk, n in per_dev.items():
        rec = DevRec.load(txn, dbs, devk)
        rec.queue_bytes = n
        rec.store(txn, dbs, devk)
        per_user[user_of(devk)] = per_user.get(user_of(devk), 0) + n
    for user, n in per_user.items():
        txn.put(user, pack_u64(n), db=dbs.accounts)


def queue_tags(txn: lmdb.Transaction, dbs: Dbs, devk: bytes) -> Iterator[tuple[int, bytes]]:
    """``(envelope bytes, NUL-joined charge tags)`` of every item queued for ``devk``
    (tags ``b""``: none), in seq order."""
    with txn.cursor(db=dbs.queue) as cur:
        cur.set_range(devk)
        # cur.key() is b"" once the cursor runs off the end (our keys are never empty).
        while (key := cur.key()) and len(key) == len(devk) + 8 and key.startswith(devk):
            value = cur.value()
            tags = txn.get(ts_key(unpack_f64(value)) + b"q" + key, db=dbs.expiry)
            yield len(value) - 8, tags or b""
            if not cur.next():
                break


def share_of_queue(txn: lmdb.Transaction, dbs: Dbs, devk: bytes, tag: bytes) -> int:
    """Queue bytes of ``tag`` in one device queue, counted from its items (for a
    queue whose shares are not counted)."""
    return sum(n for n, tags in queue_tags(txn, dbs, devk) if tag in tags.split(b"\0"))


def move_charge_tags(txn: lmdb.Transaction, dbs: Dbs) -> None:
    """Move the items' charge tags from ``qcharge`` (the first layout of issue 11)
    into their ``expiry`` entries, and empty ``qcharge`` (once, at open)."""
    with txn.cursor(db=dbs.qcharge) as cur:
        for qk, tags in cur:
            value = txn.get(qk, db=dbs.queue)
            if value is not None:
                txn.put(ts_key(unpack_f64(value)) + b"q" + qk, tags, db=dbs.expiry)
    txn.drop(dbs.qcharge, delete=False)


def dedupe_link(user: bytes, tsk: bytes, dedupe: bytes) -> bytes:
    """The ``dedupe_user`` key linking ``dedupe`` (stored at time key ``tsk``) to
    ``user``: a user's links are in time order, so an enqueue appends to its last page."""
    return user + b"|" + tsk + dedupe


def dedupe_expiry_key(txn: lmdb.Transaction, dbs: Dbs, dedupe: bytes) -> bytes | None:
    """The ``expiry`` key of a stored dedupe id, or ``None`` if the id is not stored."""
    raw = txn.get(dedupe, db=dbs.dedupe)
    return None if raw is None else ts_key(unpack_f64(raw)) + b"d" + dedupe


def link_dedupe(txn: lmdb.Transaction, dbs: Dbs, dedupe: bytes, ek: bytes,
                users: list[bytes]) -> None:
    """Link the stored id ``dedupe`` (``expiry`` key ``ek``: time key, ``d``, id) to
    ``users`` as well."""
    have = [u for u in (txn.get(ek, db=dbs.expiry) or b"").split(b"\0") if u]
    more = [u for u in users if u not in have]
    if more:
        txn.put(ek, b"\0".join(sorted([*have, *more])), db=dbs.expiry)
    for user in more:
        txn.put(dedupe_link(user, ek[:8], dedupe), b"", db=dbs.dedupe_user)


def dedupe_duplicate(txn: lmdb.Transaction, dbs: Dbs, raw: bytes | None, dedupe: bytes,
                     users: list[bytes]) -> bool:
    """Whether an enqueue with id ``dedupe`` (stored value ``raw``) for ``users`` is a
    duplicate: the id is stored, and, if only a handoff brought it (``b"i"``), linked
    to every one of ``users`` (another part of the message may still come)."""
    if raw is None:
        return False
    tsk = ts_key(unpack_f64(raw))
    return raw[8:] != b"i" or all(
        txn.get(dedupe_link(u, tsk, dedupe), db=dbs.dedupe_user) is not None for u in users)


def pack_fallback(key_id: bytes, key: bytes) -> bytes:
    """The ``fallback`` value: ``len(key_id) u16 | key_id | key``."""
    return _FB_HDR.pack(len(key_id)) + key_id + key


def unpack_fallback(raw: bytes) -> tuple[str, bytes]:
    """Inverse of :func:`pack_fallback`: ``(key_id, key)``."""
    (n,) = _FB_HDR.unpack(raw[:2])
    return raw[2:2 + n].decode("utf-8"), raw[2 + n:]


def pack_outbox(attempts: int, dest: bytes, payload: bytes) -> bytes:
    """The ``outbox`` value: ``attempts u32 | len(dest) u16 | dest | payload``."""
    return _OUTBOX_HDR.pack(attempts, len(dest)) + dest + payload


def outbox_dest_prefix(dest: bytes) -> bytes:
    """The ``outbox_dest`` key prefix of one destination (length-prefixed: no
    destination's prefix is another's, e.g. ``n1`` and ``n10``)."""
    return _FB_HDR.pack(len(dest)) + dest


def outbox_dest_key(dest: bytes, outbox_id: int) -> bytes:
    """The ``outbox_dest`` key of one entry."""
    return outbox_dest_prefix(dest) + _U64.pack(outbox_id)


def unpack_outbox(outbox_id: int, raw: bytes) -> OutboxEntry:
    """Inverse of :func:`pack_outbox`, as the entry with id ``outbox_id``."""
    attempts, n = _OUTBOX_HDR.unpack(raw[:6])
    return OutboxEntry(
        outbox_id=outbox_id, dest=raw[6:6 + n].decode("utf-8"), payload=raw[6 + n:],
        attempts=attempts,
    )


# -- reads (any transaction)


def read_queue(
    txn: lmdb.Transaction, dbs: Dbs, devk: bytes, after_seq: int, limit: int
) -> list[QueueItem]:
    """The device's first ``limit`` envelopes with seq > ``after_seq``, in seq order."""
    out: list[QueueItem] = []
    if limit <= 0:
        return out
    if after_seq >= 2**64 - 1:
        return out
    start = queue_key(devk, max(after_seq + 1, 0))
    with txn.cursor(db=dbs.queue) as cur:
        if not cur.set_range(start):
            return out
        for key, value in cur:
            if len(key) != len(devk) + 8 or not key.startswith(devk):
                break
            out.append(QueueItem(
                seq=unpack_u64(key[-8:]), ts=unpack_f64(value), envelope=value[8:],
            ))
            if len(out) >= limit:
                break
    return out


def watchers(txn: lmdb.Transaction, dbs: Dbs, user: bytes) -> list[str]:
    """The watcher user ids of ``user`` in byte (= ascending) order."""
    prefix = user + b"|"
    out: list[str] = []
    with txn.cursor(db=dbs.watchers) as cur:
        if not cur.set_range(prefix):
            return out
        for key in cur.iternext(keys=True, values=False):
            if not key.startswith(prefix):
                break
            out.append(key[len(prefix):].decode("utf-8"))
    return out


def outbox_count(txn: lmdb.Transaction, dbs: Dbs, dest: bytes, limit: int) -> int:
    """How many ``outbox_dest`` index keys ``dest`` has, counting at most ``limit``."""
    prefix = outbox_dest_prefix(dest)
    count = 0
    with txn.cursor(db=dbs.outbox_dest) as cur:
        if not cur.set_range(prefix):
            return 0
        for key in cur.iternext(keys=True, values=False):
            if count >= limit or not key.startswith(prefix) or len(key) != len(prefix) + 8:
                break
            count += 1
    return count


def outbox_list(
    txn: lmdb.Transaction, dbs: Dbs, dest: bytes | None, limit: int
) -> list[OutboxEntry]:
    """The first ``limit`` outbox entries (for ``dest``, or all), oldest first.

    For one destination this walks its ``outbox_dest`` index, so its cost does
    not grow with other destinations' backlogs.
    """
    out: list[OutboxEntry] = []
    if limit <= 0:
        return out
    if dest is None:
        with txn.cursor(db=dbs.outbox) as cur:
            for key, value in cur:
                out.append(unpack_outbox(unpack_u64(key), value))
                if len(out) >= limit:
                    break
        return out
    prefix = outbox_dest_prefix(dest)
    with txn.cursor(db=dbs.outbox_dest) as cur:
        if not cur.set_range(prefix):
            return out
        for key in cur.iternext(keys=True, values=False):
            if not key.startswith(prefix) or len(key) != len(prefix) + 8:
                break
            raw = txn.get(key[-8:], db=dbs.outbox)
            if raw is not None:
                out.append(unpack_outbox(unpack_u64(key[-8:]), raw))
                if len(out) >= limit:
                    break
    return out
