"""Thin wrappers that move :class:`relay.admin.metrics.NodeMetrics` counters where things
happen, without the components knowing about metrics:

* :class:`MeteredStorage` wraps the node's :class:`storage.Storage`: envelopes
  stored, duplicates, acked, purged and expired, outbox entries added, enqueue
  refusals; every other attribute is the wrapped storage's own.
* (messages and bytes in and out are counted where they pass: the connection's
  reader and writer, :meth:`relay.admin.metrics.NodeMetrics.read` / ``written``).
* :class:`CountingRegistry` is a :class:`relay.services.delivery.DeviceRegistry` that
  counts connected devices.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from relay.admin.metrics import NodeMetrics
from relay.services.delivery import DeviceRegistry
from storage import EnqueueRequest, EnqueueResult, Storage, StorageError


class MeteredStorage:
    """``storage`` with counters (see the module docstring). Owns nothing: closing
    stays the caller's business.

    Args:
        storage: the node's storage. metrics: where to count.
    """

    def __init__(self, storage: Storage, metrics: NodeMetrics) -> None:
        self._storage = storage
        self._m = metrics

    @property
    def wrapped(self) -> Storage:
        """The storage underneath."""
        return self._storage

    def __getattr__(self, name: str) -> Any:
        return getattr(self._storage, name)

    def _refused(self, exc: StorageError) -> None:
        self._m.storage_refusals.labels(type(exc).__name__).inc()

    def _stored(self, items: list[tuple[str, int, bytes]], result: list[int] | None) -> None:
        if result is None:
            self._m.duplicate_now()
        else:
            self._m.stored_now(len(items), sum(len(env) for _, _, env in items))

    async def enqueue(self, items: list[tuple[str, int, bytes]], **kwargs: Any) -> list[int] | None:
        """See :meth:`storage.base.Storage.enqueue`."""
        try:
            result = await self._storage.enqueue(items, **kwargs)
        except StorageError as exc:
            self._refused(exc)
            raise
        self._stored(items, result)
        return result

    async def enqueue_many(self, requests: list[EnqueueRequest]) -> list[EnqueueResult]:
        """See :meth:`storage.base.Storage.enqueue_many`."""
        results = await self._storage.enqueue_many(requests)
        for request, result in zip(requests, results, strict=True):
            if isinstance(result, StorageError):
                self._refused(result)
            else:
                self._stored(request.items, result)
        return results

    async def ack(self, user_id: str, device_id: int, up_to_seq: int) -> int:
        """See :meth:`storage.base.Storage.ack`."""
        gone = await self._storage.ack(user_id, device_id, up_to_seq)
        self._m.acked.inc(gone)
        return gone

    async def ack_many(self, acks: list[tuple[str, int, int]]) -> list[int]:
        """See :meth:`storage.base.Storage.ack_many`."""
        gone = await self._storage.ack_many(acks)
        self._m.acked.inc(sum(gone))
        return gone

    async def purge_device(self, user_id: str, device_id: int) -> int:
        """See :meth:`storage.base.Storage.purge_device`."""
        gone = await self._storage.purge_device(user_id, device_id)
        self._m.dropped.labels("purged").inc(gone)
        return gone

    async def expire(self, older_than: float) -> int:
        """See :meth:`storage.base.Storage.expire`."""
        gone = await self._storage.expire(older_than)
        self._m.dropped.labels("expired").inc(gone)
        return gone

    async def outbox_put(self, dest: str, payload: bytes) -> int:
        """See :meth:`storage.base.Storage.outbox_put`."""
        outbox_id = await self._storage.outbox_put(dest, payload)
        self._m.outbox_added.inc()
        return outbox_id

    async def outbox_put_many(self, entries: list[tuple[str, bytes]]) -> list[int]:
        """See :meth:`storage.base.Storage.outbox_put_many`."""
        ids = await self._storage.outbox_put_many(entries)
        self._m.outbox_added.inc(len(ids))
        return ids


class CountingRegistry(DeviceRegistry):
    """A :class:`~relay.services.delivery.DeviceRegistry` that counts registered sessions.

    Attributes:
        connected: sessions inside :meth:`register` now (a device's replaced
            session counts until it has left).
    """

    def __init__(self) -> None:
        super().__init__()
        self.connected = 0

    @contextmanager
    def register(self, *args: Any, **kwargs: Any) -> Iterator[None]:
        """See :meth:`relay.services.delivery.DeviceRegistry.register`."""
        with super().register(*args, **kwargs):
            self.connected += 1
            try:
                yield
            finally:
                self.connected -= 1
