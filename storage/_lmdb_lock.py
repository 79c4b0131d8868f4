"""One process per LMDB store: an exclusive ``flock`` on ``wa-relay.lock`` in its directory.

LMDB itself lets several processes share an environment, but the backend's group
commit assumes it is the only writer, and a node's in-memory state (connected
devices, outbox bookkeeping) assumes it is the only process serving its queues.
So :meth:`storage.lmdb.LmdbStorage.open` takes this lock first; a second process
opening the same directory gets :class:`~storage.errors.StorageInUse` (the node
exits 1 with that message). The kernel drops the lock when the holder exits, even
by ``kill -9``, so there is nothing stale to clean up. The file holds the
holder's pid, for the message only. (A home served by several processes needs a
shared database: ``postgresql://``.)
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager

from .errors import StorageInUse

LOCK_NAME = "wa-relay.lock"


@contextmanager
def exclusive_lock(directory: str | os.PathLike[str]) -> Iterator[None]:
    """Hold the store's lock for the block (creating ``directory`` if needed).

    Raises:
        StorageInUse: another process (or another open in this one) holds it.
        OSError: the directory or the lock file cannot be created.
    """
    os.makedirs(directory, mode=0o700, exist_ok=True)
    path = os.path.join(os.fspath(directory), LOCK_NAME)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
            raise StorageInUse(
                f"the LMDB store {os.fspath(directory)!r} is in use by another process "
                f"(pid {holder}): an lmdb:// node runs as one process; serve a node from "
                "several processes with postgresql:// storage") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock


def lock_holder(directory: str | os.PathLike[str]) -> str | None:
    """The pid (as written by the holder) of the process holding the store in
    ``directory``, or ``None`` if nobody holds it (or there is no store). Nothing is
    created; the lock is not kept.

    Raises:
        OSError: the lock file exists but cannot be opened.
    """
    path = os.path.join(os.fspath(directory), LOCK_NAME)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)
