"""The device-list watchers of :class:`storage.memory.MemoryStorage`: who fetched whose
list, when each pair was last refreshed, and the bounds of
:meth:`storage.base.Storage.add_watcher`."""

from __future__ import annotations

import time

from ._keys import check_user_id
from .base import WatchAdded

WATCHER_OVERHEAD = 16
"""Accounted bytes of one watcher pair beyond its two user ids (memory backend)."""


def watch_size(user_id: str, watcher: str) -> int:
    """Accounted bytes of the pair ``(user_id, watcher)``."""
    return len(user_id.encode()) + len(watcher.encode()) + WATCHER_OVERHEAD


class MemoryWatchersMixin:
    """Watcher methods over ``_watchers`` (user -> watcher -> last refresh, seconds)
    and ``_watching`` (watcher -> how many users it watches)."""

    _watchers: dict[str, dict[str, float]]
    _watching: dict[str, int]
    _used: int

    async def _enter(self) -> None: ...  # pragma: no cover - provided by MemoryStorage
    def _reserve(self, delta: int) -> None: ...  # pragma: no cover

    async def add_watcher(
        self, user_id: str, watcher_user_id: str, *, ts: float | None = None,
        max_watchers: int | None = None, max_watching: int | None = None,
    ) -> WatchAdded:
        """See :meth:`storage.base.Storage.add_watcher`."""
        await self._enter()
        check_user_id(user_id)
        check_user_id(watcher_user_id)
        now = time.time() if ts is None else float(ts)
        have = self._watchers.get(user_id, {})
        if watcher_user_id in have:
            have[watcher_user_id] = max(have[watcher_user_id], now)
            return WatchAdded(True)
        if max_watching is not None and self._watching.get(watcher_user_id, 0) >= max_watching:
            return WatchAdded(False)
        evicted = None
        if max_watchers is not None and len(have) >= max_watchers:
            evicted = min(have, key=lambda w: (have[w], w))
        delta = watch_size(user_id, watcher_user_id) - (
            watch_size(user_id, evicted) if evicted is not None else 0)
        self._reserve(delta)  # raises StorageFull before any change
        self._used -= delta  # counted by _drop_watcher and _put_watcher
        if evicted is not None:
            self._drop_watcher(user_id, evicted)
        self._put_watcher(user_id, watcher_user_id, now)
        return WatchAdded(True, evicted)

    async def watchers(self, user_id: str) -> list[str]:
        """See :meth:`storage.base.Storage.watchers`."""
        await self._enter()
        check_user_id(user_id)
        return sorted(self._watchers.get(user_id, ()))

    async def watching_count(self, user_id: str) -> int:
        """See :meth:`storage.base.Storage.watching_count`."""
        await self._enter()
        check_user_id(user_id)
        return self._watching.get(user_id, 0)

    async def expire_watchers(self, older_than: float) -> int:
        """See :meth:`storage.base.Storage.expire_watchers`."""
        await self._enter()
        old = [(u, w) for u, have in self._watchers.items() for w, ts in have.items()
               if ts < older_than]
        for u, w in old:
            self._drop_watcher(u, w)
        return len(old)

    def _put_watcher(self, user_id: str, watcher: str, ts: float) -> None:
        """Store a pair (or raise its time); no bound checked."""
        have = self._watchers.setdefault(user_id, {})
        if watcher in have:
            have[watcher] = max(have[watcher], ts)
            return
        have[watcher] = ts
        self._watching[watcher] = self._watching.get(watcher, 0) + 1
        self._used += watch_size(user_id, watcher)

    def _drop_watcher(self, user_id: str, watcher: str) -> None:
        have = self._watchers.get(user_id, {})
        if have.pop(watcher, None) is None:
            return
        if not have:
            del self._watchers[user_id]
        left = self._watching[watcher] - 1
        if left:
            self._watching[watcher] = left
        else:
            del self._watching[watcher]
        self._used -= watch_size(user_id, watcher)
