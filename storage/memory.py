"""``memory://``: a volatile :class:`~storage.base.Storage` kept in dicts.

For tests and throw-away nodes. Every call runs synchronously after one Trio
checkpoint, so it is atomic with respect to other tasks and cancellation
(cancelled at the checkpoint: nothing happened). Nothing survives
:meth:`MemoryStorage.aclose` or the process.

An optional ``capacity_bytes`` bound makes full-disk behaviour testable: a call
that would raise the accounted size above it raises
:class:`~storage.errors.StorageFull` and stores nothing; calls that only delete
(acks, claims, purges, expiry, outbox deletes) always succeed.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Self
from urllib.parse import parse_qs, urlsplit

import trio

from ._chains import Chains, chain_keys
from ._keys import check_bytes, check_dedupe, check_device_id, check_key_id, check_user_id
from ._memory_extras import MemoryExtrasMixin
from ._memory_handoff import DEDUPE_OVERHEAD as _DEDUPE_OVERHEAD
from ._memory_handoff import MemoryHandoffMixin
from ._memory_media import MemoryMediaMixin
from ._memory_watchers import MemoryWatchersMixin
from ._quota import check_charges, check_quota
from .base import EnqueueRequest, EnqueueResult, OutboxEntry, QueueItem
from .errors import DuplicateKey, QueueFull, StaleVersion, StorageError, StorageFull

_Dev = tuple[str, int]

# Accounted overheads in bytes per record (roughly the fixed-size key parts on disk).
_LIST_OVERHEAD = 8
_ITEM_OVERHEAD = 16
_OUTBOX_OVERHEAD = 16


class MemoryStorage(MemoryExtrasMixin, MemoryHandoffMixin, MemoryMediaMixin, MemoryWatchersMixin):
    """A :class:`~storage.base.Storage` in process memory.

    Args:
        capacity_bytes: if given, the most bytes (values plus small per-record
            overheads, see module docstring) the storage may hold; exceeding it
            raises :class:`~storage.errors.StorageFull`. ``None``: unbounded.

    Construct directly (no resources to release beyond :meth:`aclose`), or via
    :meth:`from_url` / :func:`storage.open_storage` with ``memory://`` or
    ``memory://?capacity_bytes=N``. After :meth:`aclose`, every method raises
    :class:`trio.ClosedResourceError`.
    """

    def __init__(self, *, capacity_bytes: int | None = None) -> None:
        if capacity_bytes is not None and capacity_bytes < 0:
            raise ValueError("capacity_bytes must be >= 0")
        self.capacity_bytes = capacity_bytes
        self._used = 0
        self._closed = False
        self._lists: dict[str, tuple[int, bytes]] = {}
        self._watchers: dict[str, dict[str, float]] = {}  # user -> watcher -> refreshed
        self._watching: dict[str, int] = {}  # watcher -> users it watches
        self._otks: dict[_Dev, dict[str, bytes]] = {}
        self._claimed: dict[_Dev, set[str]] = {}
        self._fallback: dict[_Dev, tuple[str, bytes]] = {}
        self._queues: dict[_Dev, dict[int, QueueItem]] = {}
        self._seq: dict[_Dev, int] = {}
        self._dedupe: dict[bytes, float] = {}
        self._dedupe_users: dict[bytes, set[str]] = {}  # dedupe id -> its items' users
        self._user_dedupe: dict[str, set[bytes]] = {}  # user -> dedupe ids (the handoff's)
        self._dedupe_imported: set[bytes] = set()  # ids only import_user stored
        self._outbox: dict[int, OutboxEntry] = {}
        self._outbox_last = 0
        self._init_extras()

    @classmethod
    @asynccontextmanager
    async def from_url(cls, url: str) -> AsyncIterator[Self]:
        """Open a fresh store for ``memory://[?capacity_bytes=N]``; closed on exit."""
        parts = urlsplit(url)
        if parts.scheme != "memory":
            raise ValueError(f"not a memory:// URL: {url!r}")
        query = parse_qs(parts.query, strict_parsing=False)
        unknown = set(query) - {"capacity_bytes"}
        if unknown:
            raise ValueError(f"unknown memory:// options: {sorted(unknown)}")
        cap = query.get("capacity_bytes")
        st = cls(capacity_bytes=int(cap[-1]) if cap else None)
        try:
            yield st
        finally:
            await st.aclose()

    # -- helpers

    async def _enter(self) -> None:
        await trio.lowlevel.checkpoint()
        if self._closed:
            raise trio.ClosedResourceError("storage is closed")

    def _reserve(self, delta: int) -> None:
        """Account ``delta`` more bytes, or raise StorageFull (before any change)."""
        if delta > 0 and self.capacity_bytes is not None:
            if self._used + delta > self.capacity_bytes:
                raise StorageFull(
                    f"memory storage full: {self._used} + {delta} > {self.capacity_bytes} bytes"
                )
        self._used += delta

    @staticmethod
    def _dev(user_id: str, device_id: int) -> _Dev:
        check_user_id(user_id)
        return (user_id, check_device_id(device_id))

    # -- lifecycle

    async def aclose(self) -> None:
        """Drop everything. Idempotent."""
        self._closed = True
        await trio.lowlevel.checkpoint()

    # -- device lists

    async def get_device_list(self, user_id: str) -> tuple[int, bytes] | None:
        """See :meth:`storage.base.Storage.get_device_list`."""
        await self._enter()
        check_user_id(user_id)
        return self._lists.get(user_id)

    async def put_device_list(self, user_id: str, version: int, blob: bytes) -> None:
        """See :meth:`storage.base.Storage.put_device_list`."""
        await self._enter()
        check_user_id(user_id)
        blob = check_bytes("blob", blob)
        old = self._lists.get(user_id)
        if old is not None and old[0] >= version:
            raise StaleVersion(f"stored device list version {old[0]} >= {version}")
        old_size = len(old[1]) + _LIST_OVERHEAD if old else 0
        self._reserve(len(blob) + _LIST_OVERHEAD - old_size)
        self._lists[user_id] = (version, blob)

    # -- one-time keys

    async def add_one_time_keys(
        self, user_id: str, device_id: int, keys: list[tuple[str, bytes]]
    ) -> int:
        """See :meth:`storage.base.Storage.add_one_time_keys`."""
        await self._enter()
        dev = self._dev(user_id, device_id)
        have = self._otks.get(dev, {})
        claimed = self._claimed.get(dev, set())
        seen: set[str] = set()
        new: list[tuple[str, bytes]] = []
        for key_id, key in keys:
            check_key_id(key_id)
            if key_id in seen or key_id in have or key_id in claimed:
                raise DuplicateKey(f"one-time key id {key_id!r} already used for {dev}")
            seen.add(key_id)
            new.append((key_id, check_bytes("key", key)))
        self._reserve(sum(len(k.encode()) + len(v) for k, v in new))
        have = self._otks.setdefault(dev, {})
        have.update(new)
        return len(have)

    async def set_fallback_key(self, user_id: str, device_id: int, key_id: str, key: bytes) -> None:
        """See :meth:`storage.base.Storage.set_fallback_key`."""
        await self._enter()
        dev = self._dev(user_id, device_id)
        check_key_id(key_id)
        key = check_bytes("key", key)
        old = self._fallback.get(dev)
        old_size = len(old[0].encode()) + len(old[1]) if old else 0
        self._reserve(len(key_id.encode()) + len(key) - old_size)
        self._fallback[dev] = (key_id, key)

    async def claim_key(self, user_id: str, device_id: int) -> tuple[str, bytes, bool] | None:
        """See :meth:`storage.base.Storage.claim_key`. Hands out the oldest key first."""
        [claimed] = await self.claim_keys([(user_id, device_id)])
        return claimed

    async def claim_keys(
        self, claims: list[tuple[str, int]]
    ) -> list[tuple[str, bytes, bool] | None]:
        """See :meth:`storage.base.Storage.claim_keys`."""
        await self._enter()
        devs = [self._dev(u, d) for u, d in claims]
        return [self._claim(dev) for dev in devs]

    def _claim(self, dev: _Dev) -> tuple[str, bytes, bool] | None:
        have = self._otks.get(dev)
        if have:
            key_id = next(iter(have))
            key = have.pop(key_id)
            self._claimed.setdefault(dev, set()).add(key_id)
            self._used -= len(key)  # the key id stays accounted, as a tombstone
            return (key_id, key, False)
        fb = self._fallback.get(dev)
        if fb is not None:
            return (fb[0], fb[1], True)
        return None

    async def get_fallback_key(self, user_id: str, device_id: int) -> tuple[str, bytes] | None:
        """See :meth:`storage.base.Storage.get_fallback_key`."""
        await self._enter()
        return self._fallback.get(self._dev(user_id, device_id))

    async def count_one_time_keys(self, user_id: str, device_id: int) -> int:
        """See :meth:`storage.base.Storage.count_one_time_keys`."""
        await self._enter()
        return len(self._otks.get(self._dev(user_id, device_id), ()))

    # -- queues

    async def enqueue(
        self, items: list[tuple[str, int, bytes]], *, dedupe: bytes | None = None,
        max_queue: int | None = None, now: float | None = None,
    ) -> list[int] | None:
        """See :meth:`storage.base.Storage.enqueue`."""
        [answer] = await self.enqueue_many([EnqueueRequest(items, dedupe, max_queue, now)])
        if isinstance(answer, StorageError):
            raise answer
        return answer

    async def enqueue_many(self, requests: list[EnqueueRequest]) -> list[EnqueueResult]:
        """See :meth:`storage.base.Storage.enqueue_many`."""
        await self._enter()
        token = object()
        for req in requests:
            check_charges(req.charges)
        checked = [
            ([(self._dev(u, d), check_bytes("envelope", env)) for u, d, env in req.items],
             None if req.dedupe is None else check_dedupe(req.dedupe), req,
             chain_keys(token, req))
            for req in requests
        ]
        chains = Chains()
        answers: list[EnqueueResult] = []
        for items, dedupe, req, keys in checked:
            answer: EnqueueResult | None = chains.blocking(keys)
            if answer is None:
                try:
                    answer = self._enqueue(items, dedupe, req.max_queue, req.now, req)
                except StorageError as exc:
                    answer = exc
            chains.record(keys, answer if isinstance(answer, StorageError) else None)
            answers.append(answer)
        return answers

    def _enqueue(
        self, checked: list[tuple[_Dev, bytes]], dedupe: bytes | None, max_queue: int | None,
        now: float | None, req: EnqueueRequest,
    ) -> list[int] | None:
        users = {dev[0] for dev, _ in checked}
        if dedupe is not None and self._is_duplicate(dedupe, users):
            return None
        ts = time.time() if now is None else float(now)
        per_dev: dict[_Dev, int] = {}
        for dev, _ in checked:
            per_dev[dev] = per_dev.get(dev, 0) + 1
        if max_queue is not None:
            for dev, n in per_dev.items():
                if len(self._queues.get(dev, ())) + n > max_queue:
                    raise QueueFull(f"queue of {dev} would exceed {max_queue} envelopes")
        check_quota([(u, d, len(env)) for (u, d), env in checked], req.charges, req.quota, self)
        size = sum(len(env) + _ITEM_OVERHEAD for _, env in checked)
        if dedupe is not None and dedupe not in self._dedupe:
            size += len(dedupe) + _DEDUPE_OVERHEAD
        self._reserve(size)
        seqs: list[int] = []
        for dev, env in checked:
            seq = self._seq.get(dev, 0) + 1
            self._seq[dev] = seq
            self._queues.setdefault(dev, {})[seq] = QueueItem(seq=seq, ts=ts, envelope=env)
            self._count_added(dev, seq, len(env), req.charges)
            seqs.append(seq)
        if dedupe is not None:
            self._dedupe.setdefault(dedupe, ts)
            self._dedupe_imported.discard(dedupe)
            self._link_dedupe(dedupe, users)
        return seqs

    async def read_queue(
        self, user_id: str, device_id: int, after_seq: int = 0, limit: int = 256
    ) -> list[QueueItem]:
        """See :meth:`storage.base.Storage.read_queue`."""
        await self._enter()
        queue = self._queues.get(self._dev(user_id, device_id), {})
        out: list[QueueItem] = []
        if limit <= 0:
            return out
        for seq, item in queue.items():  # insertion order is seq order
            if seq > after_seq:
                out.append(item)
                if len(out) >= limit:
                    break
        return out

    async def queue_length(self, user_id: str, device_id: int) -> int:
        """See :meth:`storage.base.Storage.queue_length`."""
        await self._enter()
        return len(self._queues.get(self._dev(user_id, device_id), ()))

    def _drop(self, dev: _Dev, seqs: list[int]) -> int:
        queue = self._queues[dev]
        for seq in seqs:
            n = len(queue.pop(seq).envelope)
            self._used -= n + _ITEM_OVERHEAD
            self._count_dropped(dev, seq, n)
        if not queue:
            del self._queues[dev]
        return len(seqs)

    async def ack(self, user_id: str, device_id: int, up_to_seq: int) -> int:
        """See :meth:`storage.base.Storage.ack`."""
        [gone] = await self.ack_many([(user_id, device_id, up_to_seq)])
        return gone

    async def ack_many(self, acks: list[tuple[str, int, int]]) -> list[int]:
        """See :meth:`storage.base.Storage.ack_many`."""
        await self._enter()
        checked = [(self._dev(u, d), seq) for u, d, seq in acks]
        out = []
        for dev, up_to_seq in checked:
            queue = self._queues.get(dev)
            out.append(self._drop(dev, [s for s in queue if s <= up_to_seq]) if queue else 0)
        return out

    async def purge_device(self, user_id: str, device_id: int) -> int:
        """See :meth:`storage.base.Storage.purge_device`.

        Also forgets the device's claimed key ids and fallback key; keeps its
        seq counter, so seqs are never reused.
        """
        await self._enter()
        dev = self._dev(user_id, device_id)
        for key_id, key in self._otks.pop(dev, {}).items():
            self._used -= len(key_id.encode()) + len(key)
        for key_id in self._claimed.pop(dev, set()):
            self._used -= len(key_id.encode())
        fb = self._fallback.pop(dev, None)
        if fb is not None:
            self._used -= len(fb[0].encode()) + len(fb[1])
        queue = self._queues.get(dev)
        return self._drop(dev, list(queue)) if queue else 0

    async def expire(self, older_than: float) -> int:
        """See :meth:`storage.base.Storage.expire`."""
        await self._enter()
        gone = 0
        for dev in list(self._queues):
            old = [s for s, item in self._queues[dev].items() if item.ts < older_than]
            if old:
                gone += self._drop(dev, old)
        for d in [d for d, ts in self._dedupe.items() if ts < older_than]:
            del self._dedupe[d]
            self._dedupe_imported.discard(d)
            self._unlink_dedupe(d)
            self._used -= len(d) + _DEDUPE_OVERHEAD
        return gone

    # -- outbox

    async def outbox_put(self, dest: str, payload: bytes) -> int:
        """See :meth:`storage.base.Storage.outbox_put`."""
        [oid] = await self.outbox_put_many([(dest, payload)])
        return oid

    async def outbox_put_many(self, entries: list[tuple[str, bytes]]) -> list[int]:
        """See :meth:`storage.base.Storage.outbox_put_many`."""
        await self._enter()
        checked = [(dest, check_bytes("payload", payload)) for dest, payload in entries]
        self._reserve(sum(len(d.encode()) + len(p) + _OUTBOX_OVERHEAD for d, p in checked))
        ids = []
        for dest, payload in checked:
            self._outbox_last += 1
            oid = self._outbox_last
            self._outbox[oid] = OutboxEntry(outbox_id=oid, dest=dest, payload=payload, attempts=0)
            ids.append(oid)
        return ids

    async def outbox_list(self, dest: str | None = None, limit: int = 256) -> list[OutboxEntry]:
        """See :meth:`storage.base.Storage.outbox_list`."""
        await self._enter()
        out: list[OutboxEntry] = []
        if limit <= 0:
            return out
        for entry in self._outbox.values():  # insertion order is id order
            if dest is None or entry.dest == dest:
                out.append(entry)
                if len(out) >= limit:
                    break
        return out

    async def outbox_retry(self, outbox_id: int) -> None:
        """See :meth:`storage.base.Storage.outbox_retry`."""
        await self._enter()
        entry = self._outbox.get(outbox_id)
        if entry is not None:
            self._outbox[outbox_id] = OutboxEntry(
                outbox_id=entry.outbox_id, dest=entry.dest, payload=entry.payload,
                attempts=entry.attempts + 1,
            )

    async def outbox_delete(self, outbox_id: int) -> None:
        """See :meth:`storage.base.Storage.outbox_delete`."""
        await self.outbox_delete_many([outbox_id])

    async def outbox_delete_many(self, outbox_ids: list[int]) -> None:
        """See :meth:`storage.base.Storage.outbox_delete_many`."""
        await self._enter()
        for outbox_id in outbox_ids:
            entry = self._outbox.pop(outbox_id, None)
            if entry is not None:
                self._used -= len(entry.dest.encode()) + len(entry.payload) + _OUTBOX_OVERHEAD
