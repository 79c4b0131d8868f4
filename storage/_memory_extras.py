"""The byte accounting, correspondents and invites of :class:`storage.memory.MemoryStorage`.

Kept apart from the queues themselves (:mod:`storage.memory`): exact counts of
envelope bytes per device, per user, per charge tag and per (device, tag), updated
by every enqueue and every deletion (ack, purge, expiry).
"""

from __future__ import annotations

import time

from ._keys import check_user_id

_Dev = tuple[str, int]
_CORRESPONDENT_OVERHEAD = 8
_INVITE_OVERHEAD = 16


class MemoryExtrasMixin:
    """Mixed into :class:`storage.memory.MemoryStorage` (which provides ``_enter``,
    ``_reserve``, ``_dev`` and ``_used``)."""

    def _init_extras(self) -> None:
        self._dev_bytes: dict[_Dev, int] = {}
        self._user_bytes: dict[str, int] = {}
        self._charge_bytes: dict[str, int] = {}
        self._share_bytes: dict[tuple[_Dev, str], int] = {}
        self._item_charges: dict[tuple[_Dev, int], tuple[str, ...]] = {}
        self._correspondents: dict[str, set[str]] = {}
        self._invites: dict[bytes, float] = {}

    # -- the Usage protocol of storage._quota

    def device(self, user_id: str, device_id: int) -> int:
        return self._dev_bytes.get((user_id, device_id), 0)

    def account(self, user_id: str) -> int:
        return self._user_bytes.get(user_id, 0)

    def charge(self, tag: str) -> int:
        return self._charge_bytes.get(tag, 0)

    def share(self, user_id: str, device_id: int, tag: str) -> int:
        return self._share_bytes.get(((user_id, device_id), tag), 0)

    # -- bookkeeping

    @staticmethod
    def _bump(table: dict, key: object, delta: int) -> None:
        left = table.get(key, 0) + delta
        if left:
            table[key] = left
        else:
            table.pop(key, None)

    def _count_added(self, dev: _Dev, seq: int, n: int, charges: tuple[str, ...]) -> None:
        self._bump(self._dev_bytes, dev, n)
        self._bump(self._user_bytes, dev[0], n)
        if charges:
            self._item_charges[(dev, seq)] = charges
            for tag in charges:
                self._bump(self._charge_bytes, tag, n)
                self._bump(self._share_bytes, (dev, tag), n)

    def _count_dropped(self, dev: _Dev, seq: int, n: int) -> None:
        self._bump(self._dev_bytes, dev, -n)
        self._bump(self._user_bytes, dev[0], -n)
        for tag in self._item_charges.pop((dev, seq), ()):
            self._bump(self._charge_bytes, tag, -n)
            self._bump(self._share_bytes, (dev, tag), -n)

    # -- reads

    async def queue_bytes(self, user_id: str, device_id: int | None = None) -> int:
        """See :meth:`storage.base.Storage.queue_bytes`."""
        await self._enter()  # type: ignore[attr-defined]
        if device_id is None:
            check_user_id(user_id)
            return self.account(user_id)
        return self.device(*self._dev(user_id, device_id))  # type: ignore[attr-defined]

    async def charged_bytes(
        self, tag: str, user_id: str | None = None, device_id: int | None = None
    ) -> int:
        """See :meth:`storage.base.Storage.charged_bytes`."""
        await self._enter()  # type: ignore[attr-defined]
        if user_id is None or device_id is None:
            return self.charge(tag)
        return self.share(*self._dev(user_id, device_id), tag)  # type: ignore[attr-defined]

    # -- correspondents

    async def add_correspondents(self, user_id: str, others: list[str]) -> None:
        """See :meth:`storage.base.Storage.add_correspondents`."""
        await self._enter()  # type: ignore[attr-defined]
        check_user_id(user_id)
        known = self._correspondents.get(user_id, set())
        for other in others:
            check_user_id(other)
        new = set(others) - known
        self._reserve(sum(len(o) + _CORRESPONDENT_OVERHEAD for o in new))  # type: ignore[attr-defined]
        if new:
            self._correspondents.setdefault(user_id, set()).update(new)

    async def is_correspondent(self, user_id: str, other: str) -> bool:
        """See :meth:`storage.base.Storage.is_correspondent`."""
        await self._enter()  # type: ignore[attr-defined]
        return other in self._correspondents.get(user_id, ())

    # -- invites

    async def invite_add(self, token_hash: bytes, expires_at: float) -> None:
        """See :meth:`storage.base.Storage.invite_add`."""
        await self._enter()  # type: ignore[attr-defined]
        if token_hash not in self._invites:
            self._reserve(len(token_hash) + _INVITE_OVERHEAD)  # type: ignore[attr-defined]
        self._invites[bytes(token_hash)] = float(expires_at)

    async def invite_use(self, token_hash: bytes, now: float | None = None) -> bool:
        """See :meth:`storage.base.Storage.invite_use`."""
        await self._enter()  # type: ignore[attr-defined]
        expires = self._invites.pop(bytes(token_hash), None)
        if expires is None:
            return False
        self._used -= len(token_hash) + _INVITE_OVERHEAD  # type: ignore[has-type]
        return (time.time() if now is None else now) < expires


__all__ = ["MemoryExtrasMixin"]
