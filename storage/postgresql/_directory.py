"""The key-directory methods of :class:`~storage.postgresql.PostgresStorage` (a
mixin): device lists, watchers, one-time and fallback keys.

Relies on the host's ``writer`` (the group commit), ``_fetch(query, params)`` (a
read on a pooled connection in a worker thread), ``_check_open()`` and ``_dev()``.
"""

from __future__ import annotations

import time
from typing import Any

import trio

from .. import _keys as K
from ..base import WatchAdded
from ..errors import DuplicateKey
from . import _ops_keys as kops
from ._writer import Op


class PgDirectoryMixin:
    """See :class:`storage.base.Storage` (device lists, watchers, one-time keys)."""

    # -- device lists

    async def get_device_list(self, user_id: str) -> tuple[int, bytes] | None:
        """See :meth:`storage.base.Storage.get_device_list`."""
        K.check_user_id(user_id)
        rows = await self._fetch("SELECT version, blob FROM device_lists WHERE user_id = %s",
                                 (user_id,))
        return (int(rows[0][0]), bytes(rows[0][1])) if rows else None

    async def put_device_list(self, user_id: str, version: int, blob: bytes) -> None:
        """See :meth:`storage.base.Storage.put_device_list`. ``version`` fits in 64 bits."""
        K.check_user_id(user_id)
        blob = K.check_bytes("blob", blob)
        if not 0 <= version < 2**64:
            raise ValueError(f"device list version out of range: {version}")
        self._check_open()
        await self.writer.submit(kops.PutDeviceList(user_id, version, blob))

    # -- watchers

    async def add_watcher(
        self, user_id: str, watcher_user_id: str, *, ts: float | None = None,
        max_watchers: int | None = None, max_watching: int | None = None,
    ) -> WatchAdded:
        """See :meth:`storage.base.Storage.add_watcher`. A pair stored with this time or
        a later one costs one read."""
        K.check_user_id(user_id)
        K.check_user_id(watcher_user_id)
        now = time.time() if ts is None else float(ts)
        if await self._fetch("SELECT 1 FROM watchers WHERE user_id = %s AND watcher = %s "
                             "AND ts >= %s", (user_id, watcher_user_id, now)):
            return WatchAdded(True)
        self._check_open()
        return await self.writer.submit(
            kops.AddWatcher(user_id, watcher_user_id, now, max_watchers, max_watching))

    async def watchers(self, user_id: str) -> list[str]:
        """See :meth:`storage.base.Storage.watchers`."""
        K.check_user_id(user_id)
        rows = await self._fetch(
            "SELECT watcher FROM watchers WHERE user_id = %s ORDER BY watcher", (user_id,))
        return [r[0] for r in rows]

    async def watching_count(self, user_id: str) -> int:
        """See :meth:`storage.base.Storage.watching_count`."""
        K.check_user_id(user_id)
        [(n,)] = await self._fetch("SELECT count(*) FROM watchers WHERE watcher = %s",
                                   (user_id,))
        return int(n)

    async def expire_watchers(self, older_than: float) -> int:
        """See :meth:`storage.base.Storage.expire_watchers` (an index on ``ts``)."""
        self._check_open()
        return await self.writer.submit(kops.ExpireWatchers(float(older_than)))

    # -- one-time keys

    async def add_one_time_keys(
        self, user_id: str, device_id: int, keys: list[tuple[str, bytes]]
    ) -> int:
        """See :meth:`storage.base.Storage.add_one_time_keys`."""
        user, dev = self._dev(user_id, device_id)
        raw = [(K.check_key_id(k), K.check_bytes("key", v)) for k, v in keys]
        if len({k for k, _ in raw}) != len(raw):
            await trio.lowlevel.checkpoint()
            raise DuplicateKey("a one-time key id is repeated in the call")
        self._check_open()
        return await self.writer.submit(kops.AddKeys(user, dev, raw))

    async def set_fallback_key(self, user_id: str, device_id: int, key_id: str, key: bytes) -> None:
        """See :meth:`storage.base.Storage.set_fallback_key`."""
        user, dev = self._dev(user_id, device_id)
        kid, key = K.check_key_id(key_id), K.check_bytes("key", key)
        self._check_open()
        await self.writer.submit(kops.SetFallback(user, dev, kid, key))

    async def claim_key(self, user_id: str, device_id: int) -> tuple[str, bytes, bool] | None:
        """See :meth:`storage.base.Storage.claim_key`. Hands out the lowest key id first."""
        [claimed] = await self.claim_keys([(user_id, device_id)])
        return claimed

    async def claim_keys(
        self, claims: list[tuple[str, int]]
    ) -> list[tuple[str, bytes, bool] | None]:
        """See :meth:`storage.base.Storage.claim_keys`. Freeing: never refused for room.

        Raises:
            StorageUnavailable: the database failed; no key was handed out.
        """
        batch = [kops.Claim(*self._dev(u, d)) for u, d in claims]
        self._check_open()
        return [value_of(op) for op in await self.writer.submit_many(batch)]

    async def get_fallback_key(self, user_id: str, device_id: int) -> tuple[str, bytes] | None:
        """See :meth:`storage.base.Storage.get_fallback_key`."""
        user, dev = self._dev(user_id, device_id)
        rows = await self._fetch(
            "SELECT key_id, key FROM fallback_keys WHERE user_id = %s AND device_id = %s",
            (user, dev))
        if not rows:
            return None
        key_id = rows[0][0]
        return (bytes(key_id).decode() if not isinstance(key_id, str) else key_id,
                bytes(rows[0][1]))

    async def count_one_time_keys(self, user_id: str, device_id: int) -> int:
        """See :meth:`storage.base.Storage.count_one_time_keys`."""
        user, dev = self._dev(user_id, device_id)
        rows = await self._fetch(
            "SELECT count(*) FROM otk WHERE user_id = %s AND device_id = %s", (user, dev))
        return int(rows[0][0])


def value_of(op: Op) -> Any:
    """The value of a batch answer, or raise its error."""
    if op.error is not None:
        raise op.error
    return op.value
