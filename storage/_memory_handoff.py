"""The handoff methods of :class:`storage.memory.MemoryStorage` (export, import and
delete of one user's state; durable markers). See :class:`storage.base.Storage`."""

from __future__ import annotations

import time

from ._keys import check_dedupe, check_user_id
from .base import USER_RECORD_KINDS, QueueItem, UserRecord

MARK_NAME_MAX = 200
MARK_VALUE_MAX = 4096
DEDUPE_OVERHEAD = 8
"""Accounted bytes of one dedupe id beyond its own length (memory backend)."""


def check_records(records: list[UserRecord]) -> None:
    """Raise ``ValueError`` for a record of unknown kind or with malformed fields."""
    for r in records:
        if not isinstance(r, UserRecord) or r.kind not in USER_RECORD_KINDS:
            raise ValueError(f"not a user record: {r!r}")
        if not isinstance(r.value, bytes) or not isinstance(r.key, str):
            raise ValueError(f"malformed user record: {r!r}")
        if r.device_id < 0 or r.device_id >= 2**32 or r.seq < 0:
            raise ValueError(f"malformed user record: {r!r}")
        if r.kind == "dedupe":
            check_dedupe(r.value)


def check_mark(name: str, value: bytes | None = None) -> None:
    """Raise ``ValueError`` for a marker name or value out of bounds."""
    if not isinstance(name, str) or not 0 < len(name.encode()) <= MARK_NAME_MAX:
        raise ValueError(f"a marker name has 1..{MARK_NAME_MAX} bytes")
    if value is not None and (not isinstance(value, bytes) or len(value) > MARK_VALUE_MAX):
        raise ValueError(f"a marker value is bytes of at most {MARK_VALUE_MAX}")


class MemoryHandoffMixin:
    """Handoff methods over the dicts of :class:`storage.memory.MemoryStorage`."""

    _lists: dict[str, tuple[int, bytes]]
    _watchers: dict[str, dict[str, float]]
    _otks: dict[tuple[str, int], dict[str, bytes]]
    _claimed: dict[tuple[str, int], set[str]]
    _fallback: dict[tuple[str, int], tuple[str, bytes]]
    _queues: dict[tuple[str, int], dict[int, QueueItem]]
    _seq: dict[tuple[str, int], int]
    _dedupe: dict[bytes, float]
    _dedupe_users: dict[bytes, set[str]]
    _user_dedupe: dict[str, set[bytes]]
    _dedupe_imported: set[bytes]
    _used: int

    async def _enter(self) -> None: ...  # pragma: no cover - provided by MemoryStorage
    def _reserve(self, delta: int) -> None: ...  # pragma: no cover

    def _marks(self) -> dict[str, bytes]:
        return self.__dict__.setdefault("_handoff_marks", {})

    def _link_dedupe(self, dedupe: bytes, users: set[str]) -> None:
        """Record that the request with id ``dedupe`` queued copies for ``users``."""
        self._dedupe_users.setdefault(dedupe, set()).update(users)
        for u in users:
            self._user_dedupe.setdefault(u, set()).add(dedupe)

    def _is_duplicate(self, dedupe: bytes, users: set[str]) -> bool:
        """Whether an enqueue with id ``dedupe`` for ``users`` is a duplicate: the id is
        stored, and, if only a handoff brought it, linked to every one of ``users``
        (another part of the same message for other users may still come)."""
        if dedupe not in self._dedupe:
            return False
        return dedupe not in self._dedupe_imported or users <= self._dedupe_users.get(dedupe, set())

    def _unlink_dedupe(self, dedupe: bytes) -> None:
        """Forget the users of an expired dedupe id."""
        for u in self._dedupe_users.pop(dedupe, ()):
            ids = self._user_dedupe.get(u)
            if ids is not None:
                ids.discard(dedupe)
                if not ids:
                    del self._user_dedupe[u]

    def _devices_of(self, user_id: str) -> list[int]:
        devs: set[int] = set()
        for table in (self._otks, self._claimed, self._fallback, self._queues, self._seq):
            devs.update(d for u, d in table if u == user_id)
        return sorted(devs)

    async def list_users(self, after: str = "", limit: int = 256) -> list[str]:
        """See :meth:`storage.base.Storage.list_users`."""
        await self._enter()
        users = set(self._lists)
        users.update(u for (u, _), q in self._queues.items() if q)
        users.update(u for (u, _), k in self._otks.items() if k)
        return sorted(u for u in users if u > after)[:max(limit, 0)]

    def _records(self, user_id: str) -> list[UserRecord]:
        out: list[UserRecord] = []
        if user_id in self._lists:
            version, blob = self._lists[user_id]
            out.append(UserRecord("list", seq=version, value=blob))
        out += [UserRecord("watcher", key=w, ts=ts)
                for w, ts in sorted(self._watchers.get(user_id, {}).items())]
        for d in self._devices_of(user_id):
            dev = (user_id, d)
            if dev in self._seq:
                out.append(UserRecord("seq", device_id=d, seq=self._seq[dev]))
            if dev in self._fallback:
                key_id, key = self._fallback[dev]
                out.append(UserRecord("fallback", device_id=d, key=key_id, value=key))
            out += [UserRecord("otk", device_id=d, key=k, value=v)
                    for k, v in sorted(self._otks.get(dev, {}).items())]
            out += [UserRecord("claimed", device_id=d, key=k)
                    for k in sorted(self._claimed.get(dev, ()))]
            out += [UserRecord("item", device_id=d, seq=i.seq, ts=i.ts, value=i.envelope)
                    for _, i in sorted(self._queues.get(dev, {}).items())]
        out += [UserRecord("dedupe", ts=self._dedupe[d], value=d)
                for d in sorted(self._user_dedupe.get(user_id, ())) if d in self._dedupe]
        return out

    async def export_user(self, user_id: str, *, start: int = 0, limit: int = 256) -> list[UserRecord]:
        """See :meth:`storage.base.Storage.export_user`."""
        await self._enter()
        check_user_id(user_id)
        return self._records(user_id)[max(start, 0):max(start, 0) + max(limit, 0)]

    def _delete(self, user_id: str) -> int:
        gone = 0
        old = self._lists.pop(user_id, None)
        if old is not None:
            self._used -= len(old[1]) + 8
        for w in list(self._watchers.get(user_id, ())):
            self._drop_watcher(user_id, w)  # type: ignore[attr-defined]
        for d in self._devices_of(user_id):
            dev = (user_id, d)
            for k, v in self._otks.pop(dev, {}).items():
                self._used -= len(k.encode()) + len(v)
            for k in self._claimed.pop(dev, set()):
                self._used -= len(k.encode())
            fb = self._fallback.pop(dev, None)
            if fb is not None:
                self._used -= len(fb[0].encode()) + len(fb[1])
            for item in self._queues.pop(dev, {}).values():
                self._used -= len(item.envelope) + 16
                self._count_dropped(dev, item.seq, len(item.envelope))  # type: ignore[attr-defined]
                gone += 1
        for d in self._user_dedupe.pop(user_id, set()):
            users = self._dedupe_users.get(d, set())
            users.discard(user_id)
            if not users and d in self._dedupe:  # no other user here needs the id
                self._dedupe_users.pop(d, None)
                self._dedupe_imported.discard(d)
                del self._dedupe[d]
                self._used -= len(d) + DEDUPE_OVERHEAD
        return gone

    async def import_user(
        self, user_id: str, records: list[UserRecord], *, reset: bool = False
    ) -> None:
        """See :meth:`storage.base.Storage.import_user`."""
        await self._enter()
        check_user_id(user_id)
        check_records(records)
        size = sum(len(r.value) + len(r.key.encode()) + 16 for r in records)
        self._reserve(size)  # an estimate: duplicates may be counted twice
        self._used -= size
        if reset:
            self._delete(user_id)
        for r in records:
            self._apply(user_id, r)

    def _apply(self, user_id: str, r: UserRecord) -> None:
        dev = (user_id, r.device_id)
        if r.kind == "list":
            old = self._lists.get(user_id)
            if old is None or old[0] <= r.seq:
                self._used += len(r.value) + 8 - (len(old[1]) + 8 if old else 0)
                self._lists[user_id] = (r.seq, r.value)
        elif r.kind == "watcher":  # a record from a home without times: refreshed now
            self._put_watcher(user_id, r.key, r.ts or time.time())  # type: ignore[attr-defined]
        elif r.kind == "seq":
            self._seq[dev] = max(self._seq.get(dev, 0), r.seq)
        elif r.kind == "fallback":
            self._fallback[dev] = (r.key, r.value)
        elif r.kind == "otk":
            if r.key not in self._claimed.get(dev, ()):
                keys = self._otks.setdefault(dev, {})
                if r.key not in keys:
                    self._used += len(r.key.encode()) + len(r.value)
                keys[r.key] = r.value
        elif r.kind == "claimed":
            self._otks.get(dev, {}).pop(r.key, None)
            self._claimed.setdefault(dev, set()).add(r.key)
        elif r.kind == "dedupe":
            if r.value not in self._dedupe:
                self._dedupe[r.value] = r.ts
                self._dedupe_imported.add(r.value)
                self._used += len(r.value) + DEDUPE_OVERHEAD
            self._link_dedupe(r.value, {user_id})
        else:  # item
            queue = self._queues.setdefault(dev, {})
            old_item = queue.get(r.seq)
            if old_item is None:
                self._used += len(r.value) + 16
            else:
                self._count_dropped(dev, r.seq, len(old_item.envelope))  # type: ignore[attr-defined]
            # an imported copy carries no charge tags: they are the old home's bookkeeping
            self._count_added(dev, r.seq, len(r.value), ())  # type: ignore[attr-defined]
            queue[r.seq] = QueueItem(seq=r.seq, ts=r.ts, envelope=r.value)
            self._seq[dev] = max(self._seq.get(dev, 0), r.seq)

    async def delete_user(self, user_id: str) -> int:
        """See :meth:`storage.base.Storage.delete_user`."""
        await self._enter()
        check_user_id(user_id)
        return self._delete(user_id)

    async def media_owned(self, owner: str, after: bytes = b"", limit: int = 256) -> list[bytes]:
        """See :meth:`storage.base.Storage.media_owned`."""
        await self._enter()
        blobs = self.__dict__.get("_media_blobs") or {}
        return sorted(m for m, b in blobs.items()
                      if b.owner == owner and b.complete and m > after)[:max(limit, 0)]

    async def media_delete(self, media_id: bytes) -> bool:
        """See :meth:`storage.base.Storage.media_delete`."""
        await self._enter()
        if media_id not in (self.__dict__.get("_media_blobs") or {}):
            return False
        self._drop_blob(media_id)  # type: ignore[attr-defined]
        return True

    async def get_mark(self, name: str) -> bytes | None:
        """See :meth:`storage.base.Storage.get_mark`."""
        await self._enter()
        check_mark(name)
        return self._marks().get(name)

    async def set_mark(self, name: str, value: bytes | None) -> None:
        """See :meth:`storage.base.Storage.set_mark`."""
        await self._enter()
        check_mark(name, value)
        if value is None:
            self._marks().pop(name, None)
        else:
            self._marks()[name] = value

    async def marks(self, prefix: str) -> dict[str, bytes]:
        """See :meth:`storage.base.Storage.marks`."""
        await self._enter()
        return {k: v for k, v in self._marks().items() if k.startswith(prefix)}
