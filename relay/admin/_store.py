"""Open a node's store from an operator command while the node may be running."""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from urllib.parse import urlsplit

from storage import Storage, open_storage
from storage.lmdb import LmdbStorage


def open_beside_node(url: str) -> AbstractAsyncContextManager[Storage]:
    """Open the storage at ``url`` for a short operator action (``wa-relay admin``).

    An ``lmdb://`` store is opened without the one-process lock that a serving node
    holds (:mod:`storage._lmdb_lock`): LMDB's own writer lock serializes the command's
    commits with the node's. Other schemes open as usual (PostgreSQL is shared anyway).

    Raises (on entry):
        StorageError, ValueError, UnknownBackend: as :func:`storage.open_storage`.
    """
    if urlsplit(url).scheme == "lmdb":
        return LmdbStorage.from_url(url, exclusive=False)
    return open_storage(url)
