"""Byte counts, correspondents and invites of :class:`storage.lmdb.LmdbStorage`
(layout: :mod:`storage._lmdb_layout`; the queue ops keep the counts exact)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar

import lmdb

from . import _lmdb_layout as L
from ._keys import check_bytes, check_device_id, check_user_id

T = TypeVar("T")
Op = Callable[[lmdb.Transaction, L.Dbs], Any]


def _add_correspondents(keys: list[bytes]) -> Op:
    def op(txn: lmdb.Transaction, dbs: L.Dbs) -> None:
        for key in keys:
            txn.put(key, b"", db=dbs.correspond, overwrite=False)
    return op


def _invite_add(token_hash: bytes, expires_at: float) -> Op:
    def op(txn: lmdb.Transaction, dbs: L.Dbs) -> None:
        txn.put(token_hash, L.pack_f64(expires_at), db=dbs.invites)
    return op


def _invite_use(token_hash: bytes, now: float) -> Op:
    def op(txn: lmdb.Transaction, dbs: L.Dbs) -> bool:
        raw = txn.pop(token_hash, db=dbs.invites)
        return raw is not None and now < L.unpack_f64(raw)
    return op


class LmdbExtrasMixin:
    """Mixed into :class:`storage.lmdb.LmdbStorage` (which provides ``_dbs``,
    ``_reading`` and ``writer``)."""

    _dbs: L.Dbs

    async def _reading(self, fn: Callable[[lmdb.Transaction], T]) -> T:  # pragma: no cover
        raise NotImplementedError

    async def queue_bytes(self, user_id: str, device_id: int | None = None) -> int:
        """See :meth:`storage.base.Storage.queue_bytes`."""
        user = check_user_id(user_id)
        if device_id is None:
            return await self._reading(lambda txn: L.get_u64(txn, self._dbs.accounts, user))
        devk = L.dev_key(user, check_device_id(device_id))
        return await self._reading(lambda txn: L.DevRec.load(txn, self._dbs, devk).queue_bytes)

    async def charged_bytes(
        self, tag: str, user_id: str | None = None, device_id: int | None = None
    ) -> int:
        """See :meth:`storage.base.Storage.charged_bytes`."""
        raw = tag.encode()
        if user_id is None or device_id is None:
            return await self._reading(lambda txn: L.get_u64(txn, self._dbs.charges, raw))
        devk = L.dev_key(check_user_id(user_id), check_device_id(device_id))

        def share(txn: lmdb.Transaction) -> int:
            if L.DevRec.load(txn, self._dbs, devk).shares_counted:
                return L.get_u64(txn, self._dbs.shares, devk + raw)
            return L.share_of_queue(txn, self._dbs, devk, raw)
        return await self._reading(share)

    async def add_correspondents(self, user_id: str, others: list[str]) -> None:
        """See :meth:`storage.base.Storage.add_correspondents`. Pairs already stored
        cost a read on the loop, no write."""
        prefix = check_user_id(user_id) + b"|"
        keys = [prefix + check_user_id(o) for o in others]

        def missing(txn: lmdb.Transaction) -> list[bytes]:
            return [k for k in keys if txn.get(k, db=self._dbs.correspond) is None]
        new = await self._reading(missing)
        if new:
            await self.writer.submit(_add_correspondents(new),  # type: ignore[attr-defined]
                                     size=sum(len(k) for k in new))

    async def is_correspondent(self, user_id: str, other: str) -> bool:
        """See :meth:`storage.base.Storage.is_correspondent`."""
        key = check_user_id(user_id) + b"|" + check_user_id(other)
        return await self._reading(
            lambda txn: txn.get(key, db=self._dbs.correspond) is not None)

    async def invite_add(self, token_hash: bytes, expires_at: float) -> None:
        """See :meth:`storage.base.Storage.invite_add`."""
        raw = check_bytes("token_hash", token_hash)
        await self.writer.submit(_invite_add(raw, float(expires_at)),  # type: ignore[attr-defined]
                                 size=len(raw) + 8)

    async def invite_use(self, token_hash: bytes, now: float | None = None) -> bool:
        """See :meth:`storage.base.Storage.invite_use`. Freeing (it only deletes)."""
        raw = check_bytes("token_hash", token_hash)
        when = time.time() if now is None else float(now)
        return await self.writer.submit(_invite_use(raw, when),  # type: ignore[attr-defined]
                                        freeing=True)
