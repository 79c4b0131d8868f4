"""The queue counters of one LMDB write transaction, updated in memory and written once.

Every enqueue and every deletion changes a device record (``devices``: seq, length,
bytes) and the byte counters ``accounts``, ``charges`` and ``shares`` (layout:
:mod:`storage._lmdb_layout`). In a group-commit batch the same few records are hit
again and again (16 senders and 16 receivers share a batch of 64 messages), so the
ops of a batch update them in a :class:`Counters` and the committer writes each
changed record once, with :meth:`Counters.flush` before the commit. ``shares`` are
counted only for queues whose record says so (:meth:`Counters.count_shares`). The counts stay
exact: reads see every update of the earlier ops of the batch, the counters are
flushed before any op that reads or writes these records in the transaction itself
(an op without a ``counters`` attribute), and an aborted transaction discards them.
"""

from __future__ import annotations

import lmdb

from . import _lmdb_layout as L


class Counters:
    """Write-back cache of device records and byte counters of one write transaction.

    Args:
        txn: the write transaction (the cache is valid only within it).
        dbs: its sub-database handles.

    A counter that reaches 0 (or would go below it) reads 0 and is deleted at
    :meth:`flush`, as :func:`storage._lmdb_layout.add_u64` does; a device record is
    written only if it changed, and never created all zero.
    """

    __slots__ = ("txn", "dbs", "_recs", "_accounts", "_charges", "_shares")

    def __init__(self, txn: lmdb.Transaction, dbs: L.Dbs) -> None:
        self.txn, self.dbs = txn, dbs
        self._recs: dict[bytes, tuple[L.DevRec, bytes | None]] = {}
        # key -> [stored value, current value]
        self._accounts: dict[bytes, list[int]] = {}
        self._charges: dict[bytes, list[int]] = {}
        self._shares: dict[bytes, list[int]] = {}

    def dev(self, devk: bytes) -> L.DevRec:
        """The device's record (zeros if none), to read or change in place."""
        entry = self._recs.get(devk)
        if entry is None:
            raw = self.txn.get(devk, db=self.dbs.devices)
            entry = self._recs[devk] = (L.DevRec.unpack(raw), raw)
        return entry[0]

    def _cell(self, cells: dict[bytes, list[int]], db: lmdb._Database, key: bytes) -> list[int]:
        cell = cells.get(key)
        if cell is None:
            raw = self.txn.get(key, db=db)
            n = 0 if raw is None else L.unpack_u64(raw)
            cell = cells[key] = [n, n]
        return cell

    def account(self, user: bytes) -> int:
        """Queue bytes of all the user's devices."""
        return self._cell(self._accounts, self.dbs.accounts, user)[1]

    def charge(self, tag: bytes) -> int:
        """Queue bytes charged to ``tag``."""
        return self._cell(self._charges, self.dbs.charges, tag)[1]

    def share(self, devk_tag: bytes) -> int:
        """Queue bytes of one tag in one device queue (key ``devk | tag``)."""
        return self._cell(self._shares, self.dbs.shares, devk_tag)[1]

    def add_account(self, user: bytes, delta: int) -> None:
        """Add ``delta`` (may be negative) to the user's queue bytes."""
        cell = self._cell(self._accounts, self.dbs.accounts, user)
        cell[1] = max(0, cell[1] + delta)

    def add_charge(self, tag: bytes, delta: int) -> None:
        """Add ``delta`` to the tag's queue bytes."""
        cell = self._cell(self._charges, self.dbs.charges, tag)
        cell[1] = max(0, cell[1] + delta)

    def add_share(self, devk_tag: bytes, delta: int) -> None:
        """Add ``delta`` to the tag's queue bytes in one device queue."""
        cell = self._cell(self._shares, self.dbs.shares, devk_tag)
        cell[1] = max(0, cell[1] + delta)

    def add_tags(self, devk: bytes, tags: list[bytes], delta: int, shares: bool) -> None:
        """:meth:`add_charge` of ``delta`` for each of ``tags`` and, if ``shares`` (the
        queue's shares are counted), :meth:`add_share` in ``devk``'s queue too (the
        hot path of one copy)."""
        charges, cell_of = self._charges, self._cell
        for tag in tags:
            cell = charges.get(tag) or cell_of(charges, self.dbs.charges, tag)
            cell[1] = max(0, cell[1] + delta)
        if shares:
            for tag in tags:
                self.add_share(devk + tag, delta)

    def count_shares(self, devk: bytes) -> None:
        """Start counting the shares of ``devk``'s queue: set each (device, tag) count
        from the tags of the items queued now, any older count of the queue zeroed,
        and mark the record ``shares_counted`` (no-op if it is). One pass over the
        queue's items (see :mod:`storage._lmdb_layout`)."""
        rec = self.dev(devk)
        if rec.shares_counted:
            return
        shares = self._shares
        with self.txn.cursor(db=self.dbs.shares) as cur:  # stale counts, if any
            cur.set_range(devk)
            while (key := cur.key()) and key.startswith(devk):
                self._cell(shares, self.dbs.shares, key)
                if not cur.next():
                    break
        for key, cell in shares.items():
            if key.startswith(devk):
                cell[1] = 0
        for n, tags in L.queue_tags(self.txn, self.dbs, devk):
            if tags:
                for tag in tags.split(b"\0"):
                    self.add_share(devk + tag, n)
        rec.shares_counted = True

    def flush(self) -> None:
        """Write every changed record into the transaction and empty the cache.

        Raises:
            lmdb.Error: a write failed (map full, I/O); the transaction must be aborted.
        """
        txn, dbs = self.txn, self.dbs
        for devk, (rec, raw) in self._recs.items():
            packed = rec.pack()
            if packed != raw and (raw is not None or rec != _ZERO):
                txn.put(devk, packed, db=dbs.devices)
        for cells, db in ((self._accounts, dbs.accounts), (self._charges, dbs.charges),
                          (self._shares, dbs.shares)):
            for key, (stored, n) in cells.items():
                if n == stored:
                    continue
                if n > 0:
                    txn.put(key, L.pack_u64(n), db=db)
                else:
                    txn.delete(key, db=db)
        self._recs.clear()
        self._accounts.clear()
        self._charges.clear()
        self._shares.clear()


_ZERO = L.DevRec()
