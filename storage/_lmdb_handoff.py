"""The handoff methods of :class:`storage.lmdb.LmdbStorage`: list, export, import and
delete one user's state, and durable markers (``meta`` keys ``b"mark:" + name``).
See :class:`storage.base.Storage` and the layout in :mod:`storage._lmdb_layout`."""

from __future__ import annotations

import time

import lmdb

from . import _lmdb_layout as L
from . import _lmdb_watchers as W
from ._keys import check_user_id
from ._lmdb_counters import Counters
from ._lmdb_ops import Freed
from ._memory_handoff import check_mark, check_records
from .base import UserRecord

MARK = b"mark:"


def _user_devices(txn: lmdb.Transaction, dbs: L.Dbs, user: bytes) -> list[int]:
    """Device ids with any per-device record of ``user`` (from ``devices``, ``fallback``)."""
    prefix = user + b"|"
    devs: set[int] = set()
    for db in (dbs.devices, dbs.fallback, dbs.otk, dbs.claimed):
        with txn.cursor(db=db) as cur:
            if not cur.set_range(prefix):
                continue
            for key in cur.iternext(keys=True, values=False):
                if not key.startswith(prefix):
                    break
                devs.add(int.from_bytes(key[len(prefix):len(prefix) + 4], "big"))
    return sorted(devs)


def _prefixed(txn: lmdb.Transaction, db: lmdb._Database, prefix: bytes):
    with txn.cursor(db=db) as cur:
        if not cur.set_range(prefix):
            return
        for key, value in cur:
            if not key.startswith(prefix):
                return
            yield key, value


def list_users(txn: lmdb.Transaction, dbs: L.Dbs, after: str, limit: int) -> list[str]:
    """See :meth:`storage.base.Storage.list_users`."""
    start = after.encode() + b"\x00" if after else b""
    listed: list[str] = []
    with txn.cursor(db=dbs.lists) as cur:
        if cur.set_range(start) if start else cur.first():
            for key in cur.iternext(keys=True, values=False):
                listed.append(key.decode())
                if len(listed) >= limit:
                    break
    queued: list[str] = []
    with txn.cursor(db=dbs.devices) as cur:
        if cur.set_range(start) if start else cur.first():
            for key in cur.iternext(keys=True, values=False):
                user = key[:-5].decode()
                if queued and queued[-1] == user:
                    continue
                rec = L.DevRec.load(txn, dbs, key)
                if rec.queue_len or rec.otk_count:
                    if len(queued) >= limit:
                        break
                    queued.append(user)
    return sorted({u for u in listed + queued if u > after})[:limit]


class _Page:
    """Collects the records at positions ``start .. start + limit - 1`` of a user's
    export while the sections are walked in order; what comes before is only counted."""

    def __init__(self, start: int, limit: int) -> None:
        self.start, self.end = start, start + limit
        self.pos = 0
        self.out: list[UserRecord] = []

    @property
    def full(self) -> bool:
        return self.pos >= self.end

    def add(self, make) -> None:
        """Count one record; build it (``make()``) if it is on the page."""
        if self.start <= self.pos < self.end:
            self.out.append(make())
        self.pos += 1


def export_user(txn: lmdb.Transaction, dbs: L.Dbs, user: bytes, start: int = 0,
                limit: int = 2**62) -> list[UserRecord]:
    """The records of ``user`` at positions ``start`` .. ``start + limit - 1`` in the
    order of :meth:`storage.base.Storage.export_user`. Records before the page are
    counted, not built (queued envelopes are skipped by key), so paging through a
    large queue costs about one pass, not one pass per page."""
    page = _Page(max(start, 0), max(limit, 0))
    raw = txn.get(user, db=dbs.lists)
    if raw is not None:
        page.add(lambda: UserRecord("list", seq=L.unpack_u64(raw[:8]), value=raw[8:]))
    for w, ts in W.records(txn, dbs, user):
        page.add(lambda w=w, ts=ts: UserRecord("watcher", key=w, ts=ts))
    for d in _user_devices(txn, dbs, user):
        if page.full:
            return page.out
        devk = L.dev_key(user, d)
        n = len(devk)
        rec = txn.get(devk, db=dbs.devices)
        if rec is not None:
            page.add(lambda d=d, rec=rec: UserRecord("seq", device_id=d,
                                                     seq=L.DevRec.unpack(rec).last_seq))
        fb = txn.get(devk, db=dbs.fallback)
        if fb is not None:
            key_id, key = L.unpack_fallback(fb)
            page.add(lambda d=d, k=key_id, v=key: UserRecord("fallback", device_id=d, key=k,
                                                              value=v))
        for k, v in _prefixed(txn, dbs.otk, devk):
            page.add(lambda d=d, k=k, v=v, n=n: UserRecord(
                "otk", device_id=d, key=k[n:].decode(), value=v))
        for k, _ in _prefixed(txn, dbs.claimed, devk):
            page.add(lambda d=d, k=k, n=n: UserRecord("claimed", device_id=d,
                                                               key=k[n:].decode()))
        _items(txn, dbs, devk, d, page)
    if page.full:
        return page.out
    link = user + b"|"
    ids = []
    for k, _ in _prefixed(txn, dbs.dedupe_user, link):
        dedupe = k[len(link) + 8:]
        held = txn.get(dedupe, db=dbs.dedupe)
        if held is not None:
            ids.append((dedupe, L.unpack_f64(held)))
    for dedupe, ts in sorted(ids):
        page.add(lambda v=dedupe, t=ts: UserRecord("dedupe", ts=t, value=v))
    return page.out


def _items(txn: lmdb.Transaction, dbs: L.Dbs, devk: bytes, d: int, page: _Page) -> None:
    """The device's queued envelopes (seq order) into ``page``; keys only until it starts."""
    with txn.cursor(db=dbs.queue) as cur:
        if not cur.set_range(devk):
            return
        while not page.full:
            key = cur.key()
            if len(key) != len(devk) + 8 or not key.startswith(devk):
                return
            if page.pos >= page.start:
                value = cur.value()
                page.out.append(UserRecord("item", device_id=d, seq=L.unpack_u64(key[-8:]),
                                           ts=L.unpack_f64(value), value=value[8:]))
            page.pos += 1
            if not cur.next():
                return


def _unlink_dedupe(txn: lmdb.Transaction, dbs: L.Dbs, user: bytes) -> None:
    """Delete ``user``'s dedupe links, and each id no other user is linked to."""
    link = user + b"|"
    keys = [k for k, _ in _prefixed(txn, dbs.dedupe_user, link)]
    for key in keys:
        txn.delete(key, db=dbs.dedupe_user)
        dedupe = key[len(link) + 8:]
        ek = L.dedupe_expiry_key(txn, dbs, dedupe)
        if ek is None:
            continue
        users = [u for u in (txn.get(ek, db=dbs.expiry) or b"").split(b"\0") if u and u != user]
        if users:
            txn.put(ek, b"\0".join(users), db=dbs.expiry)
        else:
            txn.delete(ek, db=dbs.expiry)
            txn.delete(dedupe, db=dbs.dedupe)


def _import_dedupe(txn: lmdb.Transaction, dbs: L.Dbs, user: bytes, r: UserRecord) -> None:
    """Store one imported dedupe id (unless stored; marked ``b"i"``: a duplicate only
    for its linked users) and link it to ``user``."""
    ek = L.dedupe_expiry_key(txn, dbs, r.value)
    if ek is None:
        txn.put(r.value, L.pack_f64(r.ts) + b"i", db=dbs.dedupe)
        ek = L.ts_key(r.ts) + b"d" + r.value
        txn.put(ek, b"", db=dbs.expiry)
    L.link_dedupe(txn, dbs, r.value, ek, [user])


def _delete(txn: lmdb.Transaction, dbs: L.Dbs, user: bytes) -> int:
    gone = 0
    txn.delete(user, db=dbs.lists)
    W.delete_user(txn, dbs, user)
    freed = Freed()
    counted: set[bytes] = set()
    for d in _user_devices(txn, dbs, user):
        devk = L.dev_key(user, d)
        with txn.cursor(db=dbs.queue) as cur:
            cur.set_range(devk)
            while (key := cur.key()) and len(key) == len(devk) + 8 and key.startswith(devk):
                tags = txn.pop(L.ts_key(L.unpack_f64(cur.value())) + b"q" + key, db=dbs.expiry)
                freed.note(key, cur.value(), tags)
                cur.delete()
                gone += 1
        for db in (dbs.otk, dbs.claimed):
            with txn.cursor(db=db) as cur:
                cur.set_range(devk)
                while (key := cur.key()) and key.startswith(devk):
                    cur.delete()
        txn.delete(devk, db=dbs.fallback)
        rec = L.DevRec.load(txn, dbs, devk)
        if rec.shares_counted:
            counted.add(devk)
        if rec.last_seq:
            rec.queue_len = rec.otk_count = rec.queue_bytes = 0
            rec.shares_counted = False
            rec.store(txn, dbs, devk)
        else:
            txn.delete(devk, db=dbs.devices)
    counters = Counters(txn, dbs)
    freed.apply_totals(counters, counted)  # the user's account total and its senders' charges
    counters.flush()
    _unlink_dedupe(txn, dbs, user)
    return gone


def delete_user(user: bytes):
    """The op of :meth:`storage.base.Storage.delete_user`."""
    def op(txn: lmdb.Transaction, dbs: L.Dbs) -> int:
        return _delete(txn, dbs, user)
    return op


def import_user(user: bytes, records: list[UserRecord], reset: bool):
    """The op of :meth:`storage.base.Storage.import_user` (validated by the caller)."""
    def op(txn: lmdb.Transaction, dbs: L.Dbs) -> None:
        if reset:
            _delete(txn, dbs, user)
        now = time.time()  # a watcher from a home without times is refreshed now
        recs: dict[int, L.DevRec] = {}

        def rec(d: int) -> L.DevRec:
            if d not in recs:
                recs[d] = L.DevRec.load(txn, dbs, L.dev_key(user, d))
            return recs[d]
        for r in records:
            devk = L.dev_key(user, r.device_id)
            if r.kind == "list":
                old = txn.get(user, db=dbs.lists)
                if old is None or L.unpack_u64(old[:8]) <= r.seq:
                    txn.put(user, L.pack_u64(r.seq) + r.value, db=dbs.lists)
            elif r.kind == "watcher":
                W.put(txn, dbs, user, r.key.encode(), r.ts or now)
            elif r.kind == "seq":
                rec(r.device_id).last_seq = max(rec(r.device_id).last_seq, r.seq)
            elif r.kind == "fallback":
                txn.put(devk, L.pack_fallback(r.key.encode(), r.value), db=dbs.fallback)
            elif r.kind == "otk":
                k = devk + r.key.encode()
                if txn.get(k, db=dbs.claimed) is None and txn.get(k, db=dbs.otk) is None:
                    txn.put(k, r.value, db=dbs.otk)
                    rec(r.device_id).otk_count += 1
            elif r.kind == "claimed":
                k = devk + r.key.encode()
                if txn.delete(k, db=dbs.otk):
                    rec(r.device_id).otk_count -= 1
                txn.put(k, b"", db=dbs.claimed)
            elif r.kind == "dedupe":
                _import_dedupe(txn, dbs, user, r)
            else:  # item
                qk = L.queue_key(devk, r.seq)
                old = txn.get(qk, db=dbs.queue)
                grown = len(r.value)  # an imported copy carries no charge tags
                if old is not None:
                    tags = txn.pop(L.ts_key(L.unpack_f64(old)) + b"q" + qk, db=dbs.expiry)
                    grown -= len(old) - 8
                    if tags:  # the replaced copy's bytes leave its charges
                        for tag in tags.split(b"\0"):
                            L.add_u64(txn, dbs.charges, tag, -(len(old) - 8))
                            if rec(r.device_id).shares_counted:
                                L.add_u64(txn, dbs.shares, devk + tag, -(len(old) - 8))
                else:
                    rec(r.device_id).queue_len += 1
                rec(r.device_id).queue_bytes = max(0, rec(r.device_id).queue_bytes + grown)
                L.add_u64(txn, dbs.accounts, user, grown)
                txn.put(qk, L.pack_f64(r.ts) + r.value, db=dbs.queue)
                txn.put(L.ts_key(r.ts) + b"q" + qk, b"", db=dbs.expiry)
                rec(r.device_id).last_seq = max(rec(r.device_id).last_seq, r.seq)
        for d, r in recs.items():
            r.store(txn, dbs, L.dev_key(user, d))
    return op


def set_mark(name: bytes, value: bytes | None):
    """The op of :meth:`storage.base.Storage.set_mark`."""
    def op(txn: lmdb.Transaction, dbs: L.Dbs) -> None:
        if value is None:
            txn.delete(MARK + name, db=dbs.meta)
        else:
            txn.put(MARK + name, value, db=dbs.meta)
    return op


class LmdbHandoffMixin:
    """Handoff methods; relies on the host's ``_dbs``, ``writer`` and ``_reading``."""

    async def list_users(self, after: str = "", limit: int = 256) -> list[str]:
        """See :meth:`storage.base.Storage.list_users`."""
        if limit <= 0:
            return []
        return await self._reading(lambda txn: list_users(txn, self._dbs, after, limit))  # type: ignore[attr-defined]

    async def export_user(self, user_id: str, *, start: int = 0, limit: int = 256) -> list[UserRecord]:
        """See :meth:`storage.base.Storage.export_user` (one read transaction on the
        loop; see :func:`export_user`)."""
        user = check_user_id(user_id)
        return await self._reading(  # type: ignore[attr-defined]
            lambda txn: export_user(txn, self._dbs, user, start, limit))  # type: ignore[attr-defined]

    async def import_user(
        self, user_id: str, records: list[UserRecord], *, reset: bool = False
    ) -> None:
        """See :meth:`storage.base.Storage.import_user`."""
        user = check_user_id(user_id)
        check_records(records)
        size = sum(len(r.value) + len(r.key) + 32 for r in records)
        await self.writer.submit(import_user(user, list(records), reset), size=size,  # type: ignore[attr-defined]
                                 est=4 * size + 4096)

    async def delete_user(self, user_id: str) -> int:
        """See :meth:`storage.base.Storage.delete_user`."""
        user = check_user_id(user_id)
        return await self.writer.submit(delete_user(user), freeing=True)  # type: ignore[attr-defined]

    async def get_mark(self, name: str) -> bytes | None:
        """See :meth:`storage.base.Storage.get_mark`."""
        check_mark(name)
        key = MARK + name.encode()
        return await self._reading(lambda txn: txn.get(key, db=self._dbs.meta))  # type: ignore[attr-defined]

    async def set_mark(self, name: str, value: bytes | None) -> None:
        """See :meth:`storage.base.Storage.set_mark`."""
        check_mark(name, value)
        await self.writer.submit(set_mark(name.encode(), value), size=len(value or b""),  # type: ignore[attr-defined]
                                 freeing=value is None)

    async def marks(self, prefix: str) -> dict[str, bytes]:
        """See :meth:`storage.base.Storage.marks`."""
        start = MARK + prefix.encode()

        def read(txn: lmdb.Transaction) -> dict[str, bytes]:
            return {k[len(MARK):].decode(): bytes(v)
                    for k, v in _prefixed(txn, self._dbs.meta, start)}  # type: ignore[attr-defined]
        return await self._reading(read)  # type: ignore[attr-defined]
