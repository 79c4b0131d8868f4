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
  than a thread hop, and keeping the loop's transactions synchronous is what
  makes growing the map between write batches safe. A cold page cache can
  stall the loop for a page fault; that is the accepted trade-off.
* **Layout** of the named sub-databases: :mod:`storage._lmdb_layout`.

Not thread-safe: use one instance from one Trio run. No global state.
"""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from functools import partial
from typing import Self, TypeVar
from urllib.parse import parse_qs, unquote, urlsplit

import lmdb
import trio

from . import _lmdb_layout as L
from . import _lmdb_ops as ops
from ._group_commit import GroupCommitWriter, translate
from ._keys import check_bytes, check_dedupe, check_device_id, check_key_id, check_user_id
from ._lmdb_media import LmdbMediaMixin
from .base import OutboxEntry, QueueItem

T = TypeVar("T")

DEFAULT_MAP_SIZE = 1 << 30  # 1 GiB
_SIZE_SUFFIXES = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_size(text: str) -> int:
    """``"1073741824"``, ``"512M"``, ``"1GiB"``, ``"64k"`` -> bytes. Raises ValueError."""
    t = text.strip().lower().removesuffix("ib").removesuffix("b")
    mult = _SIZE_SUFFIXES.get(t[-1:], 1)
    if mult != 1:
        t = t[:-1]
    if not t.isdigit():
        raise ValueError(f"bad size {text!r}")
    return int(t) * mult


def path_from_url(url: str) -> tuple[str, dict[str, list[str]]]:
    """``lmdb:///abs/path?...`` -> ``("/abs/path", query)``; ``lmdb://rel/path`` is relative."""
    parts = urlsplit(url)
    if parts.scheme != "lmdb":
        raise ValueError(f"not an lmdb:// URL: {url!r}")
    path = unquote(parts.netloc + parts.path)
    if not path:
        raise ValueError(f"lmdb URL has no path: {url!r}")
    return path, parse_qs(parts.query)


class LmdbStorage(LmdbMediaMixin):
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

    @classmethod
    @asynccontextmanager
    async def open(
        cls, path: str | os.PathLike[str], *, map_size: int = DEFAULT_MAP_SIZE,
        max_batch_ops: int = 1024, max_batch_bytes: int = 16 << 20,
    ) -> AsyncIterator[Self]:
        """Open (creating if needed) the environment in directory ``path``.

        Args:
            path: a directory; ``data.mdb`` and ``lock.mdb`` live in it.
            map_size: the most bytes the database may use (LMDB map size). A
                write that does not fit raises StorageFull; deletions may grow
                the map slightly so a full store can still drain.
            max_batch_ops, max_batch_bytes: group-commit batch bounds.

        Yields the storage; on exit, queued writes are committed and the
        environment is closed. Raises StorageError if LMDB cannot open it.
        """
        try:
            env = await trio.to_thread.run_sync(partial(
                lmdb.open, os.fspath(path), map_size=map_size, subdir=True, create=True,
                sync=True, metasync=True, lock=True, max_dbs=len(L.DB_NAMES) + 2,
                readahead=False,
            ))
        except lmdb.Error as exc:
            raise translate(exc) from exc
        try:
            try:
                dbs = await trio.to_thread.run_sync(L.Dbs.open, env)
            except lmdb.Error as exc:
                raise translate(exc) from exc
            writer = GroupCommitWriter(
                env, dbs, max_batch_ops=max_batch_ops, max_batch_bytes=max_batch_bytes,
            )
            st = cls(env, dbs, writer)
            try:
                async with trio.open_nursery() as nursery:
                    await nursery.start(writer.serve)
                    try:
                        yield st
                    finally:
                        await st.aclose()
            except BaseExceptionGroup as group:
                # The writer task does not raise, so a group here only wraps what the
                # caller's block raised: give it back unwrapped, as callers expect.
                if len(group.exceptions) == 1:
                    inner = group.exceptions[0]
                    raise inner from inner.__cause__
                raise
        finally:
            env.close()

    @classmethod
    def from_url(cls, url: str) -> AbstractAsyncContextManager[Self]:
        """``lmdb:///abs/path[?map_size=BYTES]`` (sizes like ``512M``, ``1GiB`` allowed);
        ``lmdb://rel/path`` is relative to the working directory. See :meth:`open`."""
        path, query = path_from_url(url)
        unknown = set(query) - {"map_size"}
        if unknown:
            raise ValueError(f"unknown lmdb:// options: {sorted(unknown)}")
        kwargs = {}
        if "map_size" in query:
            kwargs["map_size"] = parse_size(query["map_size"][-1])
        return cls.open(path, **kwargs)

    # -- plumbing

    def _read(self, fn: Callable[[lmdb.Transaction], T]) -> T:
        """Run ``fn`` in a short read transaction on the loop (see module docstring)."""
        if self._closed:
            raise trio.ClosedResourceError("storage is closed")
        try:
            with self._env.begin(write=False) as txn:
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
        """The current LMDB map size in bytes."""
        return self._env.info()["map_size"]

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

    # -- watchers

    async def add_watcher(self, user_id: str, watcher_user_id: str) -> None:
        """See :meth:`storage.base.Storage.add_watcher`. A pair already stored
        costs a read on the loop, no write."""
        key = check_user_id(user_id) + b"|" + check_user_id(watcher_user_id)
        if await self._reading(lambda txn: txn.get(key, db=self._dbs.watchers)) is not None:
            return
        await self.writer.submit(ops.add_watcher(key), size=len(key))

    async def watchers(self, user_id: str) -> list[str]:
        """See :meth:`storage.base.Storage.watchers`."""
        user = check_user_id(user_id)
        return await self._reading(lambda txn: L.watchers(txn, self._dbs, user))

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
        devk = self._devk(user_id, device_id)
        return await self.writer.submit(ops.claim_key(devk), freeing=True)

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
        raw = [(self._devk(u, d), check_bytes("envelope", env)) for u, d, env in items]
        dd = None if dedupe is None else check_dedupe(dedupe)
        ts = time.time() if now is None else float(now)
        return await self.writer.submit(
            ops.enqueue(raw, dd, max_queue, ts), size=sum(len(e) + 32 for _, e in raw),
        )

    async def read_queue(
        self, user_id: str, device_id: int, after_seq: int = 0, limit: int = 256
    ) -> list[QueueItem]:
        """See :meth:`storage.base.Storage.read_queue`."""
        devk = self._devk(user_id, device_id)
        return await self._reading(
            lambda txn: L.read_queue(txn, self._dbs, devk, after_seq, limit)
        )

    async def queue_length(self, user_id: str, device_id: int) -> int:
        """See :meth:`storage.base.Storage.queue_length`."""
        devk = self._devk(user_id, device_id)
        return await self._reading(lambda txn: L.DevRec.load(txn, self._dbs, devk).queue_len)

    async def ack(self, user_id: str, device_id: int, up_to_seq: int) -> int:
        """See :meth:`storage.base.Storage.ack`."""
        devk = self._devk(user_id, device_id)
        return await self.writer.submit(ops.ack(devk, up_to_seq), freeing=True)

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
        d, payload = dest.encode("utf-8"), check_bytes("payload", payload)
        if len(d) > 0xFFFF:
            raise ValueError("dest too long")
        return await self.writer.submit(ops.outbox_put(d, payload), size=len(d) + len(payload))

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
        if 0 < outbox_id < 2**64:
            await self.writer.submit(ops.outbox_delete(outbox_id), freeing=True)
        else:
            await trio.lowlevel.checkpoint()

    @staticmethod
    def _devk(user_id: str, device_id: int) -> bytes:
        return L.dev_key(check_user_id(user_id), check_device_id(device_id))
