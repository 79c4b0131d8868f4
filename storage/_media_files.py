"""Blob files of the LMDB media store (see :mod:`storage._lmdb_media`): blocking
file helpers that run in worker threads only, and the per-storage file state.

Every function here blocks (``open``, ``pwrite``, ``fsync``, ``pread``, hashing):
call them through ``trio.to_thread.run_sync``, never on the event loop.
"""

from __future__ import annotations

import errno
import hashlib
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import trio

from .errors import StorageError, StorageFull

HASH_READ = 1 << 20  # bytes per read while hashing a finished blob

_FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT}


def fsync_dir(path: Path) -> None:
    """Make the entries of directory ``path`` durable (a new or removed file)."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_at(path: Path, offset: int, data: bytes, new_file: bool) -> None:
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
        fsync_dir(path.parent)


def sha256_file(path: Path, size: int) -> bytes:
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


def read_at(path: Path, offset: int, length: int) -> bytes:
    """Up to ``length`` bytes at ``offset`` of ``path`` (``pread``; fewer at the end)."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    try:
        return os.pread(fd, length, offset)
    finally:
        os.close(fd)


def unlink(path: Path) -> None:
    """Remove ``path``; a file that is already gone is fine.

    Raises:
        StorageError: any other failure (EIO, EROFS, ...), via :func:`file_error`, so
            that a caller's storage-error handling covers it (the expiry sweep logs
            and retries it; a file left behind is an orphan, removed at the next open).
    """
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise file_error(exc) from exc


def file_error(exc: OSError) -> StorageError:
    """The storage error for a failed file call: ``StorageFull`` for ENOSPC/EDQUOT, chained."""
    if exc.errno in _FULL_ERRNOS:
        err: StorageError = StorageFull(f"storage full: {exc.strerror}")
    else:
        err = StorageError(f"media file I/O failed: {exc}")
    err.__cause__ = exc
    return err


class KeyedLocks:
    """One :class:`trio.Lock` per key, forgotten when nobody holds or waits for it."""

    def __init__(self) -> None:
        self._locks: dict[bytes, list] = {}  # key -> [lock, users]

    @asynccontextmanager
    async def hold(self, key: bytes) -> AsyncIterator[None]:
        """Hold the lock of ``key`` for the block (waiters queue in FIFO order)."""
        entry = self._locks.setdefault(key, [trio.Lock(), 0])
        entry[1] += 1
        try:
            async with entry[0]:
                yield
        finally:
            entry[1] -= 1
            if entry[1] == 0:
                del self._locks[key]


class MediaFiles:
    """Per-storage media state: the blob directory, per-blob locks, the orphan sweep."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.locks = KeyedLocks()
        self.ready = False
        self.init_lock = trio.Lock()

    def path(self, media_id: bytes) -> Path:
        """The file of blob ``media_id``: ``<root>/<hex media_id>``."""
        return self.root / media_id.hex()
