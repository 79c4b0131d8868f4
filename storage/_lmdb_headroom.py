"""Room on the *disk* for freeing ops: data.mdb is kept allocated ahead of LMDB's last page.

The map's ``reserve`` (:func:`storage._lmdb_commit.default_reserve`) keeps room inside
the map for acks, purges and expiry, but LMDB (without ``MDB_WRITEMAP``) grows
data.mdb by writing pages past its end, and copy-on-write needs new pages once the
free list is used up. On a full disk those writes fail (ENOSPC), and so would an ack.
So the file is kept allocated (``posix_fallocate``, which reserves the blocks) up to
the last page in use plus the reserve plus what the next batch may add, capped at
``map_size``. When that allocation fails, the disk is full for *adding* ops: they are
refused (``StorageFull``), unless the pages freed inside the file (by acks) hold them
and the reserve, while freeing ops write into blocks already allocated.

Cost: one ``env.info()`` per batch; a ``posix_fallocate`` only when the file must grow,
by at least ``reserve`` bytes at a time.
"""

from __future__ import annotations

import errno
import logging
import os
from collections.abc import Callable

import lmdb

log = logging.getLogger("storage._group_commit")

NO_ROOM_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})
"""``posix_fallocate`` failures that mean "no room" (EFBIG: a file size limit)."""


class DiskHeadroom:
    """Keeps data.mdb of ``env`` allocated ahead of its last page (blocking calls;
    the writer's thread).

    Args:
        env: the open environment (``subdir=True``: its file is ``path/data.mdb``).
        map_size: the bound; the file is never allocated beyond it.
        reserve: bytes kept allocated past the pages in use for freeing ops.

    Attributes:
        allocated: bytes of data.mdb known to be allocated.
        room: False while the last allocation failed for lack of room.
    """

    def __init__(self, env: lmdb.Environment, map_size: int, reserve: int) -> None:
        self._env = env
        self._map_size = map_size
        self._reserve = reserve
        self._psize: int = env.stat()["psize"]
        self._fd = os.open(os.path.join(env.path(), "data.mdb"), os.O_RDWR | os.O_CLOEXEC)
        self.allocated = os.fstat(self._fd).st_size
        self.room = True

    def close(self) -> None:
        """Close the file descriptor (idempotent)."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def ensure(self, adding: int, used: Callable[[], int]) -> bool:
        """Make sure the file is allocated up to the last page in use + ``adding`` (what
        the next batch's adding ops may write, bytes) + the reserve; returns
        :attr:`room`. When the disk has no room for that, there is room all the same
        if the file's free pages hold ``adding`` + the reserve (``used()``: bytes of
        the pages in use, read only then). Errors other than "no room" are logged and
        count as room (the commit itself will then tell).
        """
        end = (self._env.info()["last_pgno"] + 1) * self._psize
        want = min(self._map_size, end + adding + self._reserve)
        if want <= self.allocated:
            self.room = True
            return True
        target = min(self._map_size, want + self._reserve)  # grow by chunks
        try:
            os.posix_fallocate(self._fd, self.allocated, target - self.allocated)
        except OSError as exc:
            if exc.errno in NO_ROOM_ERRNOS:
                if self.allocated - used() >= adding + self._reserve:
                    return True  # freed pages inside the file hold it
                if self.room:
                    log.warning("disk full: data.mdb cannot grow to %d bytes (%s); adding "
                                "ops are refused, freeing ops use the %d bytes allocated",
                                target, exc.strerror, self.allocated)
                self.room = False
                return False
            log.warning("cannot allocate data.mdb ahead (%r); going on without", exc)
            self.allocated = self._map_size  # e.g. no fallocate here: do not retry
            return True
        self.allocated = target
        self.room = True
        return True
