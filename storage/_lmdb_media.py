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

import errno
import hashlib
import os
import struct
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import lmdb
import trio

from . import _lmdb_layout as L
from ._keys import check_bytes, check_user_id
from ._media_args import check_media_append, check_media_id, check_media_read
from .base import MediaInfo
from .errors import MediaConflict, MediaCorrupt, StorageError, StorageFull

MEDIA_DIR = "media"
MEDIA_USED = b"media_used"
HASH_READ = 1 << 20  # bytes per read while hashing a finished blob
SWEEP_BATCH = 1000

_REC = struct.Struct(">QQBd")
_FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT}


def _pack(info: MediaInfo) -> bytes:
    return _REC.pack(info.size, info.received, int(info.complete), info.ts) + info.owner.encode()


def _unpack(media_id: bytes, raw: bytes) -> MediaInfo:
    size, received, complete, ts = _REC.unpack(raw[:_REC.size])
    return MediaInfo(media_id, size, received, bool(complete), raw[_REC.size:].decode(), ts)


def _validate(info: MediaInfo | None, size: int, offset: int, owner: str) -> None:
    received = 0 if info is None else info.received
    if info is not None and info.size != size:
        raise MediaConflict(f"blob has size {info.size}, not {size}")
    if info is not None and info.owner != owner:
        raise MediaConflict("another user's upload of this blob is in progress")
    if offset != received:
        raise MediaConflict(f"offset {offset} is not the {received} bytes received")


def _time_key(info: MediaInfo) -> bytes:
    return (b"c" if info.complete else b"p") + L.ts_key(info.ts) + info.media_id


def _over_quota(used: int, old: MediaInfo | None, size: int, adding: int,
                max_total: int | None) -> bool:
    """True if an append of ``adding`` bytes must be refused: the store would hold more
    than ``max_total``, or a new blob's whole ``size`` could never fit."""
    if max_total is None:
        return False
    return used + adding > max_total or (old is None and used + size > max_total)


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
        _validate(old, new.size, offset, new.owner)
        used = _used(txn, dbs)
        adding = new.received - offset
        if _over_quota(used, old, new.size, adding, max_total):
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


# -- blocking file helpers (worker threads only)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_at(path: Path, offset: int, data: bytes, new_file: bool) -> None:
    """Write ``data`` at ``offset`` and make it durable (creating the file if needed)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o600)
    try:
        view, pos = memoryview(data), offset
        while view:
            n = os.pwrite(fd, view, pos)
            view, pos = view[n:], pos + n
        (os.fdatasync if hasattr(os, "fdatasync") else os.fsync)(fd)
    finally:
        os.close(fd)
    if new_file:
        _fsync_dir(path.parent)


def _sha256_file(path: Path, size: int) -> bytes:
    """SHA-256 of the first ``size`` bytes of ``path``, read :data:`HASH_READ` bytes at a time."""
    digest = hashlib.sha256()
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    try:
        pos = 0
        while pos < size:
            block = os.pread(fd, min(HASH_READ, size - pos), pos)
            if not block:
                break
            digest.update(block)
            pos += len(block)
    finally:
        os.close(fd)
    return digest.digest()


def _read_at(path: Path, offset: int, length: int) -> bytes:
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    try:
        return os.pread(fd, length, offset)
    finally:
        os.close(fd)


def _unlink(path: Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _file_error(exc: OSError) -> StorageError:
    if exc.errno in _FULL_ERRNOS:
        err: StorageError = StorageFull(f"storage full: {exc.strerror}")
    else:
        err = StorageError(f"media file I/O failed: {exc}")
    err.__cause__ = exc
    return err


class _KeyedLocks:
    """One :class:`trio.Lock` per key, forgotten when nobody holds or waits for it."""

    def __init__(self) -> None:
        self._locks: dict[bytes, list] = {}  # key -> [lock, users]

    @asynccontextmanager
    async def hold(self, key: bytes) -> AsyncIterator[None]:
        entry = self._locks.setdefault(key, [trio.Lock(), 0])
        entry[1] += 1
        try:
            async with entry[0]:
                yield
        finally:
            entry[1] -= 1
            if entry[1] == 0:
                del self._locks[key]


class _MediaFiles:
    """Per-storage media state: the blob directory, per-blob locks, the orphan sweep."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.locks = _KeyedLocks()
        self.ready = False
        self.init_lock = trio.Lock()

    def path(self, media_id: bytes) -> Path:
        return self.root / media_id.hex()


class LmdbMediaMixin:
    """Media blobs as files beside the LMDB environment; see the module docstring.

    Relies on the host class's ``_env``, ``_dbs``, ``writer`` and ``_reading``.
    """

    async def _media_files(self) -> _MediaFiles:
        files = self.__dict__.get("_media_state")
        if files is None:
            root = Path(self._env.path()) / MEDIA_DIR  # type: ignore[attr-defined]
            files = self.__dict__["_media_state"] = _MediaFiles(root)
        if not files.ready:
            async with files.init_lock:
                if not files.ready:
                    await self._media_sweep(files)
                    files.ready = True
        return files

    async def _media_sweep(self, files: _MediaFiles) -> None:
        """Create the media directory; delete files that have no record (orphans of a crash)."""
        def listing() -> list[str]:
            if not files.root.exists():
                files.root.mkdir(mode=0o700)
                _fsync_dir(files.root.parent)
            return os.listdir(files.root)

        try:
            names = await trio.to_thread.run_sync(listing)
        except OSError as exc:
            raise _file_error(exc) from exc
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
            await trio.to_thread.run_sync(_unlink, path)

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
            _validate(info, size, offset, owner)
            if max_total is not None and _over_quota(
                    await self.media_usage(), info, size, len(chunk), max_total):
                raise StorageFull(f"media quota of {max_total} bytes exceeded")
            path = files.path(media_id)
            end = offset + len(chunk)
            try:
                await trio.to_thread.run_sync(_write_at, path, offset, chunk, info is None)
                digest = None
                if end == size:
                    digest = await trio.to_thread.run_sync(_sha256_file, path, size)
            except OSError as exc:
                raise _file_error(exc) from exc
            if digest is not None and digest != media_id:
                if info is not None:
                    await self.writer.submit(_op_delete(media_id), freeing=True)  # type: ignore[attr-defined]
                await trio.to_thread.run_sync(_unlink, path)
                raise MediaCorrupt("the blob's SHA-256 differs from its media id; it was deleted")
            new = MediaInfo(media_id, size, end, digest is not None, owner, ts)
            try:
                return await self.writer.submit(  # type: ignore[attr-defined]
                    _op_append(new, offset, max_total), size=len(owner) + 64,
                )
            except StorageError:
                if info is None:  # nothing refers to the file we just created
                    await trio.to_thread.run_sync(_unlink, path)
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
            data = await trio.to_thread.run_sync(_read_at, files.path(media_id), offset, n)
        except FileNotFoundError:
            return None  # expired meanwhile
        except OSError as exc:
            raise _file_error(exc) from exc
        if len(data) != n:
            raise StorageError(f"media file {media_id.hex()} is shorter than its record")
        return data

    async def media_usage(self) -> int:
        """See :meth:`storage.base.Storage.media_usage`."""
        await self._media_files()
        return await self._reading(lambda txn: _used(txn, self._dbs))  # type: ignore[attr-defined]

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
                    await trio.to_thread.run_sync(_unlink, files.path(media_id))
        return len(gone)
