"""Observability of :class:`storage.lmdb.LmdbStorage` (optional capabilities that
``relay.admin.metrics`` looks for): group-commit batch observer, store sizes, outbox
depth per destination. Reads run on the loop like every LMDB read (no scan)."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import lmdb

from . import _lmdb_layout as L

if TYPE_CHECKING:
    from ._group_commit import GroupCommitWriter


class LmdbStatsMixin:
    """Mixed into :class:`~storage.lmdb.LmdbStorage` (which provides the attributes below)."""

    _env: lmdb.Environment
    _dbs: L.Dbs
    writer: GroupCommitWriter
    map_size: int

    def _read(self, fn: Callable[[lmdb.Transaction], Any]) -> Any:  # pragma: no cover
        raise NotImplementedError

    def observe_batches(self, callback: Callable[[int, float], None] | None) -> None:
        """Call ``callback(ops, seconds)`` on the event loop after every group-commit
        batch (its size and the duration of its thread call, commit and fsync
        included); ``None`` stops. The callback must not raise or block."""
        self.writer.on_batch = callback

    def stats(self) -> dict[str, int]:
        """Sizes of the store, cheap (no scan; on the loop).

        Returns:
            ``queued``: envelopes in all device queues; ``outbox``: outbox entries;
            ``used_bytes``: pages in use (see :meth:`used_bytes`); ``map_bytes``:
            the map size; ``file_bytes``: the size of ``data.mdb`` on disk;
            ``disk_free_bytes``: bytes free for an unprivileged user on its file
            system.

        Raises:
            StorageUnavailable: LMDB failed. OSError: the directory cannot be stat'ed.
        """
        def read(txn: lmdb.Transaction) -> tuple[int, int, int]:
            return (txn.stat(self._dbs.queue)["entries"], txn.stat(self._dbs.outbox)["entries"],
                    self.writer.used_bytes(txn))

        queued, outbox, used = self._read(read)
        path = self._env.path()
        vfs = os.statvfs(path)
        return {"queued": queued, "outbox": outbox, "used_bytes": used,
                "map_bytes": self.map_size,
                "file_bytes": os.stat(os.path.join(path, "data.mdb")).st_size,
                "disk_free_bytes": vfs.f_bavail * vfs.f_frsize}

    def outbox_counts(self, dests: list[str], limit: int) -> dict[str, int]:
        """How many outbox entries each of ``dests`` has, counting at most ``limit``
        each (keys only, through the per-destination index; on the loop)."""
        def read(txn: lmdb.Transaction) -> dict[str, int]:
            return {d: L.outbox_count(txn, self._dbs, d.encode("utf-8"), limit) for d in dests}
        return self._read(read)

