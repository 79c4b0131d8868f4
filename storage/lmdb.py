"""``lmdb:///path``: the default, durable :class:`~storage.base.Storage` over py-lmdb.

* **Durability.** The environment is opened with ``sync=True``,
  ``metasync=True``, ``lock=True``: a commit returns only after fsync, and a
  call returns only after its batch committed.
* **Group commit.** Every write goes through one
  :class:`~storage._group_commit.GroupCommitWriter` task, which runs each batch
  of concurrent calls as one transaction inside one ``trio.to_thread`` call (see
  that module for batching, op isolation and full-map handling).
* **Reads** run on the event loop in a short read-only transaction that never
  spans an ``await``. LMDB reads are lock-free memory-mapped lookups that never
  fsync; a bounded read (``limit`` items) from the page cache costs far less
  than a thread hop. A cold page cache can stall the loop for a page fault;
  that is the accepted trade-off. A read that finds the reader table full
  (slots of killed processes) clears stale slots and tries once more.
* **Bounded.** ``map_size`` is the most ``data.mdb`` ever takes; part of it
  (``reserve``) is kept for freeing ops so a full store can always drain.
* **Layout** of the named sub-databases: :mod:`storage._lmdb_layout`.

Not thread-safe: use one instance from one Trio run. No global state.
"""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, ExitStack, asynccontextmanager
from functools import partial
from typing import Self, TypeVar

import lmdb
import trio

from . import _lmdb_layout as L
from . import _lmdb_ops as ops
from ._chains import chain_keys
from ._group_commit import FaultHook, GroupCommitWriter, default_reserve, translate
from ._keys import check_bytes, check_dedupe, check_device_id, check_key_id, check_user_id
from ._lmdb_commit import PendingOp
from ._lmdb_env import DEFAULT_MAP_SIZE, open_env, parse_size, path_from_url
from ._lmdb_extras import LmdbExtrasMixin
from ._lmdb_handoff import LmdbHandoffMixin
from ._lmdb_lock import exclusive_lock, lock_holder
from ._lmdb_media import LmdbMediaMixin
from ._lmdb_stats import LmdbStatsMixin
from ._lmdb_watchers import LmdbWatchersMixin, index_once
from ._quota import check_charges
from ._running import running_writer
from .base import EnqueueRequest, EnqueueResult, OutboxEntry, QueueItem
from .errors import StorageError, StorageUnavailable

T = TypeVar("T")
__all__ = ["DEFAULT_MAP_SIZE", "LmdbStorage", "lock_holder", "parse_size", "path_from_url"]


class LmdbStorage(LmdbExtrasMixin, LmdbHandoffMixin, LmdbMediaMixin, LmdbStatsMixin,
                  LmdbWatchersMixin):
    """A durable :class:`~storage.base.Storage` in one LMDB environment (a directory).

    Open it with :meth:`open` or :meth:`from_url` (async context managers that
    own the writer task); do not call the constructor yourself.

    Backend-specific behaviour: ``user_id`` must not contain ``"|"`` (real ones
    are base32), ``device_id`` must fit in 32 bits, key ids are at most 200
    UTF-8 bytes, dedupe ids 1..255 bytes (else ValueError). After
    :meth:`aclose`, methods raise :class:`trio.ClosedResourceError`.
    """

    def __init__(self, env: lmdb.Environment, dbs: L.Dbs, writer: GroupCommitWriter) -> None:
        self._env = env
        self._dbs = dbs
        self.writer = writer
        self._closed = False
        self._on_enqueued: Callable[[str, int], None] | None = None  # notify_enqueued
        self._on_stored: Callable[[str, int, list[tuple[int, float, bytes]]], None] | None = None

    @classmethod
    @asynccontextmanager
    async def open(
        cls, path: str | os.PathLike[str], *, map_size: int = DEFAULT_MAP_SIZE,
        reserve: int | None = None, max_batch_ops: int = 1024, max_batch_bytes: int = 16 << 20,
        max_readers: int = 1024, reader_check_interval: float = 10.0,
        fault_hook: FaultHook | None = None, exclusive: bool = True,
    ) -> AsyncIterator[Self]:
        """Open (creating if needed) the environment in directory ``path``.

        Args:
            path: a directory; ``data.mdb`` and ``lock.mdb`` live in it.
            map_size: the most bytes ``data.mdb`` may ever take (the LMDB map size);
                the map is never grown. An environment whose file is already larger
                (written by an older version that grew its map) keeps its size.
            reserve: bytes of the map kept for freeing ops (acks, purges, expiry,
                claims, outbox deletes): a write that would raise the pages in use
                above ``map_size - reserve`` is refused with StorageFull. Default
                :func:`~storage._group_commit.default_reserve` (1/8, 64 KiB..16 MiB).
            max_batch_ops, max_batch_bytes: group-commit batch bounds.
            max_readers: LMDB reader slots (read transactions of all processes at
                once; 64 bytes each in ``lock.mdb``). Set by the first process that
                opens the environment; later ones use the size of its table.
            reader_check_interval: seconds between clearing stale reader slots of
                dead processes (also done at open). If the table is full of stale
                slots at open (py-lmdb needs a slot to open), opening is retried
                for ``2 * reader_check_interval + 1`` seconds, long enough for
                another node process on the environment to clear them.
            fault_hook: test-only fault injection, see
                :data:`~storage._group_commit.FaultHook`.
            exclusive: hold the directory's lock file while open (a serving node:
                one process at a time, :mod:`storage._lmdb_lock`). ``False`` is for
                short operator tools (``wa-relay admin user``) that read or make small
                edits next to the running node: LMDB's own writer lock serializes
                their commits with the node's.

        Yields the storage; on exit, queued writes are committed and the
        environment is closed.

        Raises:
            StorageInUse: another process (or another open) holds the store.
            StorageError: LMDB cannot open it.
        """
        if reserve is None:
            reserve = default_reserve(map_size)
        if not 0 <= reserve < map_size:
            raise ValueError(f"reserve must be in 0..map_size-1, not {reserve}")
        with ExitStack() as lock:
            try:
                if exclusive:
                    lock.enter_context(exclusive_lock(path))
            except OSError as exc:
                raise StorageUnavailable(f"cannot lock the LMDB store {os.fspath(path)!r}: "
                                         f"{exc}") from exc
            async with cls._open_locked(path, map_size, reserve, max_batch_ops,
                                        max_batch_bytes, max_readers, reader_check_interval,
                                        fault_hook) as st:
                yield st

    @classmethod
    @asynccontextmanager
    async def _open_locked(
        cls, path: str | os.PathLike[str], map_size: int, reserve: int, max_batch_ops: int,
        max_batch_bytes: int, max_readers: int, reader_check_interval: float,
        fault_hook: FaultHook | None,
    ) -> AsyncIterator[Self]:
        env = await open_env(path, map_size, max_readers, 2 * reader_check_interval + 1)
        try:
            try:
                # Slots of killed processes would fill the reader table: clear them first.
                cleared = await trio.to_thread.run_sync(env.reader_check)
                dbs = await trio.to_thread.run_sync(L.Dbs.open, env)
                await trio.to_thread.run_sync(index_once, env, dbs)
            except lmdb.Error as exc:
                raise translate(exc) from exc
            writer = GroupCommitWriter(
                env, dbs, max_batch_ops=max_batch_ops, max_batch_bytes=max_batch_bytes,
                limit_bytes=map_size - reserve, reader_check_interval=reader_check_interval,
                fault_hook=fault_hook,
            )
            writer.stale_readers_cleared = cleared
            st = cls(env, dbs, writer)
            async with running_writer(writer, st) as running:
                yield running
        finally:
            env.close()

    @classmethod
    def from_url(cls, url: str, *, exclusive: bool = True) -> AbstractAsyncContextManager[Self]:
        """``lmdb:///abs/path[?map_size=BYTES&reserve=BYTES]`` (sizes like ``512M``,
        ``1GiB`` allowed); ``lmdb://rel/path`` is relative to the working directory.
        See :meth:`open` (``exclusive`` too)."""
        path, query = path_from_url(url)
        unknown = set(query) - {"map_size", "reserve"}
        if unknown:
            raise ValueError(f"unknown lmdb:// options: {sorted(unknown)}")
        kwargs = {name: parse_size(query[name][-1]) for name in ("map_size", "reserve")
                  if name in query}
        return cls.open(path, exclusive=exclusive, **kwargs)

    # -- plumbing

    def _read(self, fn: Callable[[lmdb.Transaction], T]) -> T:
        """Run ``fn`` in a short read transaction on the loop (see module docstring)."""
        if self._closed:
            raise trio.ClosedResourceError("storage is closed")
        try:
            try:
                txn = self._env.begin(write=False)
            except lmdb.ReadersFullError:
                # Killed processes left their slots behind: clear them, try once more.
                self.writer.check_readers()
                txn = self._env.begin(write=False)
            with txn:
                return fn(txn)
        except lmdb.Error as exc:
            raise translate(exc) from exc

    async def _reading(self, fn: Callable[[lmdb.Transaction], T]) -> T:
        await trio.lowlevel.checkpoint()
        return self._read(fn)

    async def aclose(self) -> None:
        """Commit queued writes and stop the writer. Idempotent. The environment
        itself is closed when :meth:`open`'s block exits."""
        if not self._closed:
            self._closed = True
            self.writer.close()
        with trio.CancelScope(shield=True):
            await self.writer.stopped.wait()

    @property
    def map_size(self) -> int:
        """The LMDB map size in bytes: the most ``data.mdb`` may take."""
        return self._env.info()["map_size"]

    def used_bytes(self) -> int:
        """Bytes of the pages the stored data uses now (what the admission bound,
        ``map_size - reserve``, is compared with); freed pages are not counted."""
        return self._read(self.writer.used_bytes)

    # -- device lists

    async def get_device_list(self, user_id: str) -> tuple[int, bytes] | None:
        """See :meth:`storage.base.Storage.get_device_list`."""
        user = check_user_id(user_id)

        def read(txn: lmdb.Transaction) -> tuple[int, bytes] | None:
            raw = txn.get(user, db=self._dbs.lists)
            return None if raw is None else (L.unpack_u64(raw[:8]), raw[8:])
        return await self._reading(read)

    async def put_device_list(self, user_id: str, version: int, blob: bytes) -> None:
        """See :meth:`storage.base.Storage.put_device_list`. ``version`` fits in 64 bits."""
        user = check_user_id(user_id)
        blob = check_bytes("blob", blob)
        if not 0 <= version < 2**64:
            raise ValueError(f"device list version out of range: {version}")
        await self.writer.submit(ops.put_device_list(user, version, blob), size=len(blob))

    # -- one-time keys

    async def add_one_time_keys(
        self, user_id: str, device_id: int, keys: list[tuple[str, bytes]]
    ) -> int:
        """See :meth:`storage.base.Storage.add_one_time_keys`."""
        devk = self._devk(user_id, device_id)
        raw = [(check_key_id(k), check_bytes("key", v)) for k, v in keys]
        return await self.writer.submit(
            ops.add_one_time_keys(devk, raw), size=sum(len(k) + len(v) for k, v in raw),
        )

    async def set_fallback_key(self, user_id: str, device_id: int, key_id: str, key: bytes) -> None:
        """See :meth:`storage.base.Storage.set_fallback_key`."""
        devk = self._devk(user_id, device_id)
        kid, key = check_key_id(key_id), check_bytes("key", key)
        await self.writer.submit(ops.set_fallback_key(devk, kid, key), size=len(kid) + len(key))

    async def claim_key(self, user_id: str, device_id: int) -> tuple[str, bytes, bool] | None:
        """See :meth:`storage.base.Storage.claim_key`. Hands out the lowest key id first."""
        [claimed] = await self.claim_keys([(user_id, device_id)])
        return claimed

    async def claim_keys(
        self, claims: list[tuple[str, int]]
    ) -> list[tuple[str, bytes, bool] | None]:
        """See :meth:`storage.base.Storage.claim_keys`. Freeing: never refused for room.

        Raises:
            StorageUnavailable: the medium failed; no key was handed out.
            ValueError, TypeError: a malformed id; nothing was done.
        """
        devks = [self._devk(u, d) for u, d in claims]
        answers = await self.writer.submit_many(
            [(ops.claim_key(devk), 0, None, True) for devk in devks])
        return [_value(answer) for answer in answers]

    async def get_fallback_key(self, user_id: str, device_id: int) -> tuple[str, bytes] | None:
        """See :meth:`storage.base.Storage.get_fallback_key`."""
        devk = self._devk(user_id, device_id)

        def read(txn: lmdb.Transaction) -> tuple[str, bytes] | None:
            raw = txn.get(devk, db=self._dbs.fallback)
            if raw is None:
                return None
            key_id, key = L.unpack_fallback(raw)
            return key_id, bytes(key)
        return await self._reading(read)

    async def count_one_time_keys(self, user_id: str, device_id: int) -> int:
        """See :meth:`storage.base.Storage.count_one_time_keys`."""
        devk = self._devk(user_id, device_id)
        return await self._reading(lambda txn: L.DevRec.load(txn, self._dbs, devk).otk_count)

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
        """See :meth:`storage.base.Storage.enqueue_many`. One submission to the group
        commit; a request that would not fit within ``map_size - reserve`` is refused
        alone (StorageFull), and a refused sender's later requests to the same devices
        are skipped by the committer (:mod:`storage._chains`).

        Raises:
            ValueError, TypeError: a malformed argument in any request; nothing was stored.
            trio.ClosedResourceError: the storage is closed.
        """
        psize = self.writer.psize
        token = object()
        specs = []
        tss: list[float] = []
        for req in requests:
            raw = [(self._devk(u, d), check_bytes("envelope", env)) for u, d, env in req.items]
            sizes = (None if req.quota is None
                     else [(u, d, len(env)) for (u, d, _), (_, env) in zip(req.items, raw, strict=True)]
                     if len(raw) != 1 else [(req.items[0][0], req.items[0][1], len(raw[0][1]))])
            dd = None if req.dedupe is None else check_dedupe(req.dedupe)
            ts = time.time() if req.now is None else float(req.now)
            tss.append(ts)
            charges = check_charges(req.charges)
            op = ops.enqueue(raw, dd, req.max_queue, ts, charges, req.quota, sizes,
                             chain=chain_keys(token, req))
            specs.append((op, sum(len(e) + 32 for _, e in raw),
                          ops.enqueue_estimate(raw, dd, psize, op.tags_len), False))
        hook, stored = self._on_enqueued, self._on_stored
        after = (None if hook is None and stored is None
                 else partial(_report_enqueued, hook, requests) if stored is None
                 else partial(_report_stored, stored, requests, tss))
        answers = await self.writer.submit_many(specs, after=after)
        return [_answer(answer) for answer in answers]

    def notify_enqueued(self, hook: Callable[[str, int], None]) -> bool:
        """Call ``hook(user_id, device_id)`` on the event loop for every device an
        enqueue adds envelopes to, as soon as its commit is handed back, before the
        enqueuing caller resumes (a woken pusher then reads in the same scheduler round
        as the caller, not the next: docs/benchmarks.md, "Session 6"). It must not
        raise or block. Replaces an earlier hook; returns True (this backend reports)."""
        self._on_enqueued = hook
        return True

    def deliver_enqueued(
        self, hook: Callable[[str, int, list[tuple[int, float, bytes]]], None]
    ) -> bool:
        """As :meth:`notify_enqueued`, but with what was stored: call
        ``hook(user_id, device_id, items)`` on the event loop once per device and
        committed ``enqueue_many``, as soon as its commit is handed back (durable),
        before the enqueuing caller resumes; ``items`` are ``(seq, ts, stored
        envelope)`` in seq order (the node writes them to an idle, caught-up device
        from there: :meth:`relay.services.delivery.DeviceRegistry.stored`). It must not
        raise or block. Takes precedence over :meth:`notify_enqueued`'s hook; returns
        True (this backend reports)."""
        self._on_stored = hook
        return True

    async def read_queue(
        self, user_id: str, device_id: int, after_seq: int = 0, limit: int = 256
    ) -> list[QueueItem]:
        """See :meth:`storage.base.Storage.read_queue`."""
        devk = self._devk(user_id, device_id)
        return await self._reading(
            lambda txn: L.read_queue(txn, self._dbs, devk, after_seq, limit)
        )

    def read_queue_now(
        self, user_id: str, device_id: int, after_seq: int = 0, limit: int = 256
    ) -> list[QueueItem]:
        """:meth:`read_queue` without its checkpoint (a short read in place, on the
        loop), for a caller that was scheduled just now: a pusher woken by an enqueue
        (:class:`relay.services.delivery.Pusher`) saves a trip through the scheduler
        between the commit and the ``deliver``.

        Raises:
            trio.ClosedResourceError: the storage is closed. StorageError: LMDB failed.
        """
        devk = self._devk(user_id, device_id)
        return self._read(lambda txn: L.read_queue(txn, self._dbs, devk, after_seq, limit))

    async def queue_length(self, user_id: str, device_id: int) -> int:
        """See :meth:`storage.base.Storage.queue_length`."""
        devk = self._devk(user_id, device_id)
        return await self._reading(lambda txn: L.DevRec.load(txn, self._dbs, devk).queue_len)

    async def ack(self, user_id: str, device_id: int, up_to_seq: int) -> int:
        """See :meth:`storage.base.Storage.ack`."""
        [gone] = await self.ack_many([(user_id, device_id, up_to_seq)])
        return gone

    async def ack_many(self, acks: list[tuple[str, int, int]]) -> list[int]:
        """See :meth:`storage.base.Storage.ack_many`. Freeing: uses the reserve, never
        refused for room.

        Raises:
            StorageUnavailable: the medium failed (a StorageFull only if the reserve
                was too small even for a delete); acks before it in the list may be applied.
            ValueError, TypeError: a malformed id; nothing was done.
        """
        specs = [(ops.ack(self._devk(u, d), seq), 0, None, True) for u, d, seq in acks]
        return [_value(answer) for answer in await self.writer.submit_many(specs)]

    async def purge_device(self, user_id: str, device_id: int) -> int:
        """See :meth:`storage.base.Storage.purge_device`. Also forgets the device's
        claimed key ids and fallback key; keeps its seq counter."""
        devk = self._devk(user_id, device_id)
        return await self.writer.submit(ops.purge_device(devk), freeing=True)

    async def expire(self, older_than: float) -> int:
        """See :meth:`storage.base.Storage.expire`. Uses a time index: cost is
        proportional to what expires, not to what is stored."""
        return await self.writer.submit(ops.expire(float(older_than)), freeing=True)

    # -- outbox

    async def outbox_put(self, dest: str, payload: bytes) -> int:
        """See :meth:`storage.base.Storage.outbox_put`."""
        [oid] = await self.outbox_put_many([(dest, payload)])
        return oid

    async def outbox_put_many(self, entries: list[tuple[str, bytes]]) -> list[int]:
        """See :meth:`storage.base.Storage.outbox_put_many`.

        Raises:
            StorageFull, StorageUnavailable: nothing of the call was stored.
            ValueError, TypeError: a malformed argument; nothing was stored.
        """
        psize = self.writer.psize
        raw = []
        for dest, payload in entries:
            d, p = dest.encode("utf-8"), check_bytes("payload", payload)
            if len(d) > 0xFFFF:
                raise ValueError("dest too long")
            raw.append((d, p))
        specs = [(ops.outbox_put_many(raw), sum(len(d) + len(p) for d, p in raw),
                  sum(ops.record_estimate(8, 6 + len(d) + len(p), psize)
                      + ops.record_estimate(len(d) + 10, 0, psize) for d, p in raw) + 64,
                  False)]
        [(value, error)] = await self.writer.submit_many(specs)
        if error is not None:
            raise error
        return value

    async def outbox_list(self, dest: str | None = None, limit: int = 256) -> list[OutboxEntry]:
        """See :meth:`storage.base.Storage.outbox_list`."""
        d = None if dest is None else dest.encode("utf-8")
        return await self._reading(lambda txn: L.outbox_list(txn, self._dbs, d, limit))

    async def outbox_retry(self, outbox_id: int) -> None:
        """See :meth:`storage.base.Storage.outbox_retry`."""
        if 0 < outbox_id < 2**64:
            await self.writer.submit(ops.outbox_retry(outbox_id), freeing=True)
        else:
            await trio.lowlevel.checkpoint()

    async def outbox_delete(self, outbox_id: int) -> None:
        """See :meth:`storage.base.Storage.outbox_delete`."""
        await self.outbox_delete_many([outbox_id])

    async def outbox_delete_many(self, outbox_ids: list[int]) -> None:
        """See :meth:`storage.base.Storage.outbox_delete_many`. Freeing.

        Raises:
            StorageUnavailable: the medium failed; nothing was deleted.
        """
        ids = [i for i in outbox_ids if 0 < i < 2**64]
        if ids:
            await self.writer.submit(ops.outbox_delete_many(ids), freeing=True)
        else:
            await trio.lowlevel.checkpoint()

    @staticmethod
    def _devk(user_id: str, device_id: int) -> bytes:
        return L.dev_key(check_user_id(user_id), check_device_id(device_id))


def _report_enqueued(hook: Callable[[str, int], None], requests: list[EnqueueRequest],
                     pending: list[PendingOp]) -> None:
    """:meth:`LmdbStorage.notify_enqueued`'s call for one committed ``enqueue_many``:
    the devices of every request that stored envelopes (not refused, not a duplicate)."""
    for req, op in zip(requests, pending, strict=True):
        if op.error is None and op.value is not None:
            for user_id, device_id, _ in req.items:
                hook(user_id, device_id)


def _report_stored(hook: Callable[[str, int, list[tuple[int, float, bytes]]], None],
                   requests: list[EnqueueRequest], tss: list[float],
                   pending: list[PendingOp]) -> None:
    """:meth:`LmdbStorage.deliver_enqueued`'s call for one committed ``enqueue_many``:
    per device, the ``(seq, ts, envelope)`` items stored by every request that was not
    refused or a duplicate, in seq order (the ops ran in list order)."""
    stored: dict[tuple[str, int], list[tuple[int, float, bytes]]] = {}
    for req, ts, op in zip(requests, tss, pending, strict=True):
        if op.error is None and op.value is not None:
            for (user_id, device_id, envelope), seq in zip(req.items, op.value, strict=True):
                stored.setdefault((user_id, device_id), []).append((seq, ts, bytes(envelope)))
    for (user_id, device_id), items in stored.items():
        hook(user_id, device_id, items)


def _answer(answer: tuple[T, Exception | None]) -> T | StorageError:
    """A batch answer: the value, or the StorageError refusing it; other errors raise."""
    value, error = answer
    if error is None:
        return value
    if isinstance(error, StorageError):
        return error
    raise error


def _value(answer: tuple[T, Exception | None]) -> T:
    """The value of a batch answer, or raise its error."""
    value, error = answer
    if error is not None:
        raise error
    return value
