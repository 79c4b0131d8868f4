"""The media methods of :class:`storage.lmdb.LmdbStorage` (a mixin).

Where the bytes live: one file per blob, ``<env dir>/media/<hex media_id>``,
next to ``data.mdb``; the blob's *record* (size, bytes received, complete,
owner, time) lives in LMDB and is written through the environment's single
group-commit writer like every other write. Why not chunks as LMDB values:
LMDB reads through its memory map, so serving or hashing a 200 MiB blob would
map 200 MiB of file pages into the node's resident set; ``pread`` on a plain
file goes through the page cache without growing the process. Large values
also fragment LMDB's free-page lists, and the map size would have to cover the
media quota.

One append (see :meth:`storage.base.Storage.media_append`), under a per-blob
Trio lock:

1. read the record on the loop and validate (offset, size, owner, quota);
2. in a worker thread: ``pwrite`` the chunk at its offset and ``fdatasync``
   (plus an fsync of the directory when the file is new);
3. if the chunk completes the blob: in a worker thread, stream the file through
   SHA-256 (1 MiB reads); a mismatch deletes the record and the file;
4. commit the new record (validated again inside the writer's transaction).

The record is the only truth: bytes past ``received`` in a file (a crash or a
refused commit between steps 2 and 4) are never read, and the next append
overwrites them. A crash after a record was deleted but before its file was
unlinked leaves an orphan file; the first media call after opening removes
files that have no record. Nothing here fsyncs or hashes on the event loop.

Record layout (db ``media``, key = media_id)::

    size u64 | received u64 | complete u8 | ts f64 | owner UTF-8

``media_time`` indexes records by ``b"c" | ts_key(ts) | media_id`` (complete) or
``b"p" | ts_key(ts) | media_id`` (unfinished) for :meth:`media_expire`; ``meta``
key ``b"media_used"`` holds the bytes received by all records together (u64),
for the quota.
"""

from __future__ import annotations

import os
import struct
import time
from pathlib import Path

import lmdb
import trio

from . import _lmdb_layout as L
from ._keys import check_bytes, check_user_id
from ._media_args import (
    check_continues,
    check_media_append,
    check_media_id,
    check_media_read,
    over_quota,
)
from ._media_files import (
    MediaFiles,
    file_error,
    fsync_dir,
    read_at,
    sha256_file,
    unlink,
    write_at,
)
from .base import MediaInfo
from .errors import MediaCorrupt, StorageError, StorageFull

MEDIA_DIR = "media"
MEDIA_USED = b"media_used"
SWEEP_BATCH = 1000

_REC = struct.Struct(">QQBd")


def _pack(info: MediaInfo) -> bytes:
    return _REC.pack(info.size, info.received, int(info.complete), info.ts) + info.owner.encode()


def _unpack(media_id: bytes, raw: bytes) -> MediaInfo:
    size, received, complete, ts = _REC.unpack(raw[:_REC.size])
    return MediaInfo(media_id, size, received, bool(complete), raw[_REC.size:].decode(), ts)


def _time_key(info: MediaInfo) -> bytes:
    return (b"c" if info.complete else b"p") + L.ts_key(info.ts) + info.media_id


def _used(txn: lmdb.Transaction, dbs: L.Dbs) -> int:
    raw = txn.get(MEDIA_USED, db=dbs.meta)
    return 0 if raw is None else L.unpack_u64(raw)


def _delete_record(txn: lmdb.Transaction, dbs: L.Dbs, info: MediaInfo) -> None:
    txn.delete(info.media_id, db=dbs.media)
    txn.delete(_time_key(info), db=dbs.media_time)
    txn.put(MEDIA_USED, L.pack_u64(max(_used(txn, dbs) - info.received, 0)), db=dbs.meta)


# -- ops run by the group-commit writer (validate, then write; see storage._lmdb_ops)


def _op_append(new: MediaInfo, offset: int, max_total: int | None):
    def op(txn: lmdb.Transaction, dbs: L.Dbs) -> MediaInfo:
        raw = txn.get(new.media_id, db=dbs.media)
        old = None if raw is None else _unpack(new.media_id, raw)
        if old is not None and old.complete and old.size == new.size:
            return old
        check_continues(old, new.size, offset, new.owner)
        used = _used(txn, dbs)
        adding = new.received - offset
        if over_quota(used, old, new.size, adding, max_total):
            raise StorageFull(f"media quota of {max_total} bytes exceeded")
        if old is not None:
            txn.delete(_time_key(old), db=dbs.media_time)
        txn.put(MEDIA_USED, L.pack_u64(used + adding), db=dbs.meta)
        txn.put(new.media_id, _pack(new), db=dbs.media)
        txn.put(_time_key(new), b"", db=dbs.media_time)
        return new
    return op


def _op_delete(media_id: bytes):
    def op(txn: lmdb.Transaction, dbs: L.Dbs) -> bool:
        raw = txn.get(media_id, db=dbs.media)
        if raw is None:
            return False
        _delete_record(txn, dbs, _unpack(media_id, raw))
        return True
    return op


def _op_expire(older_than: float, stalled_before: float):
    def op(txn: lmdb.Transaction, dbs: L.Dbs) -> list[bytes]:
        gone: list[MediaInfo] = []
        with txn.cursor(db=dbs.media_time) as cur:
            for state, before in ((b"c", older_than), (b"p", stalled_before)):
                limit = L.ts_key(before)
                cur.set_range(state)
                while (key := cur.key()) and key[:1] == state and key[1:9] < limit:
                    raw = txn.get(key[9:], db=dbs.media)
                    if raw is not None:
                        gone.append(_unpack(key[9:], raw))
                    cur.next()
        for info in gone:
            _delete_record(txn, dbs, info)
        return [info.media_id for info in gone]
    return op


class LmdbMediaMixin:
    """Media blobs as files beside the LMDB environment; see the module docstring.

    Relies on the host class's ``_env``, ``_dbs``, ``writer`` and ``_reading``.
    """

    async def _media_files(self) -> MediaFiles:
        files = self.__dict__.get("_media_state")
        if files is None:
            root = Path(self._env.path()) / MEDIA_DIR  # type: ignore[attr-defined]
            files = self.__dict__["_media_state"] = MediaFiles(root)
        if not files.ready:
            async with files.init_lock:
                if not files.ready:
                    await self._media_sweep(files)
                    files.ready = True
        return files

    async def _media_sweep(self, files: MediaFiles) -> None:
        """Create the media directory; delete files that have no record (orphans of a crash)."""
        def listing() -> list[str]:
            if not files.root.exists():
                files.root.mkdir(mode=0o700)
                fsync_dir(files.root.parent)
            return os.listdir(files.root)

        try:
            names = await trio.to_thread.run_sync(listing)
        except OSError as exc:
            raise file_error(exc) from exc
        orphans = []
        for i, name in enumerate(names):
            if i % SWEEP_BATCH == SWEEP_BATCH - 1:
                await trio.lowlevel.checkpoint()
            try:
                media_id = bytes.fromhex(name)
            except ValueError:
                continue
            if len(media_id) == 32 and await self._media_info(media_id) is None:
                orphans.append(files.root / name)
        for path in orphans:
            await trio.to_thread.run_sync(unlink, path)

    async def _media_info(self, media_id: bytes) -> MediaInfo | None:
        def read(txn: lmdb.Transaction) -> MediaInfo | None:
            raw = txn.get(media_id, db=self._dbs.media)  # type: ignore[attr-defined]
            return None if raw is None else _unpack(media_id, raw)
        return await self._reading(read)  # type: ignore[attr-defined]

    async def media_append(
        self, media_id: bytes, size: int, offset: int, chunk: bytes, *, owner: str,
        max_total: int | None = None, now: float | None = None,
    ) -> MediaInfo:
        """See :meth:`storage.base.Storage.media_append` and the module docstring."""
        media_id = check_media_id(media_id)
        chunk = check_bytes("chunk", chunk)
        check_user_id(owner)
        check_media_append(size, offset, len(chunk))
        ts = time.time() if now is None else float(now)
        files = await self._media_files()
        async with files.locks.hold(media_id):
            info = await self._media_info(media_id)
            if info is not None and info.complete and info.size == size:
                return info
            check_continues(info, size, offset, owner)
            if max_total is not None and over_quota(
                    await self.media_usage(), info, size, len(chunk), max_total):
                raise StorageFull(f"media quota of {max_total} bytes exceeded")
            path = files.path(media_id)
            end = offset + len(chunk)
            try:
                await trio.to_thread.run_sync(write_at, path, offset, chunk, info is None)
                digest = None
                if end == size:
                    digest = await trio.to_thread.run_sync(sha256_file, path, size)
            except OSError as exc:
                raise file_error(exc) from exc
            if digest is not None and digest != media_id:
                if info is not None:
                    await self.writer.submit(_op_delete(media_id), freeing=True)  # type: ignore[attr-defined]
                await trio.to_thread.run_sync(unlink, path)
                raise MediaCorrupt("the blob's SHA-256 differs from its media id; it was deleted")
            new = MediaInfo(media_id, size, end, digest is not None, owner, ts)
            try:
                return await self.writer.submit(  # type: ignore[attr-defined]
                    _op_append(new, offset, max_total), size=len(owner) + 64,
                )
            except StorageError:
                if info is None:  # nothing refers to the file we just created
                    await trio.to_thread.run_sync(unlink, path)
                raise

    async def media_status(self, media_id: bytes) -> MediaInfo | None:
        """See :meth:`storage.base.Storage.media_status`."""
        media_id = check_media_id(media_id)
        await self._media_files()
        return await self._media_info(media_id)

    async def media_read(self, media_id: bytes, offset: int, length: int) -> bytes | None:
        """See :meth:`storage.base.Storage.media_read`. Reads with ``pread`` in a worker thread."""
        media_id = check_media_id(media_id)
        files = await self._media_files()
        info = await self._media_info(media_id)
        if info is None or not info.complete:
            return None
        check_media_read(info.size, offset, length)
        n = min(length, info.size - offset)
        if n == 0:
            return b""
        try:
            data = await trio.to_thread.run_sync(read_at, files.path(media_id), offset, n)
        except FileNotFoundError:
            return None  # expired meanwhile
        except OSError as exc:
            raise file_error(exc) from exc
        if len(data) != n:
            raise StorageError(f"media file {media_id.hex()} is shorter than its record")
        return data

    async def media_usage(self) -> int:
        """See :meth:`storage.base.Storage.media_usage`."""
        await self._media_files()
        return await self._reading(lambda txn: _used(txn, self._dbs))  # type: ignore[attr-defined]

    async def media_owned(self, owner: str, after: bytes = b"", limit: int = 256) -> list[bytes]:
        """See :meth:`storage.base.Storage.media_owned` (a scan of the media records)."""
        def read(txn: lmdb.Transaction) -> list[bytes]:
            out: list[bytes] = []
            with txn.cursor(db=self._dbs.media) as cur:  # type: ignore[attr-defined]
                if not (cur.set_range(after + b"\0") if after else cur.first()):
                    return out
                for key, raw in cur:
                    info = _unpack(key, raw)
                    if info.owner == owner and info.complete and key > after:
                        out.append(bytes(key))
                        if len(out) >= limit:
                            break
            return out
        if limit <= 0:
            return []
        return await self._reading(read)  # type: ignore[attr-defined]

    async def media_delete(self, media_id: bytes) -> bool:
        """See :meth:`storage.base.Storage.media_delete`: the record goes first, then
        the file (under the blob's lock, unless an upload re-created it meanwhile)."""
        files = await self._media_files()
        async with files.locks.hold(media_id):
            gone = await self.writer.submit(_op_delete(media_id), freeing=True)  # type: ignore[attr-defined]
            if gone:
                await trio.to_thread.run_sync(unlink, files.path(media_id))
        return gone

    async def media_expire(
        self, older_than: float, *, incomplete_older_than: float | None = None
    ) -> int:
        """See :meth:`storage.base.Storage.media_expire`. Records go in one
        transaction (cost proportional to what expires: a time index per state);
        then each file is unlinked under its blob's lock unless an upload
        re-created the blob meanwhile."""
        files = await self._media_files()
        stalled = older_than if incomplete_older_than is None else max(
            older_than, incomplete_older_than)
        gone = await self.writer.submit(  # type: ignore[attr-defined]
            _op_expire(float(older_than), float(stalled)), freeing=True)
        for media_id in gone:
            async with files.locks.hold(media_id):
                if await self._media_info(media_id) is None:
                    await trio.to_thread.run_sync(unlink, files.path(media_id))
        return len(gone)
