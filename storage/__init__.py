"""Pluggable storage for wa-relay nodes: the :class:`Storage` protocol, backends, registry.

Backends are chosen by URL with :func:`open_storage`: ``lmdb:///path`` (default),
``memory://``; third parties register an entry point in group ``wa_relay.storage``
and prove themselves with :mod:`storage.testing`.
"""

from .base import (
    MEDIA_CHUNK_MAX,
    MEDIA_ID_SIZE,
    EnqueueRequest,
    EnqueueResult,
    MediaInfo,
    OutboxEntry,
    QueueItem,
    QueueQuota,
    Storage,
    UserRecord,
    WatchAdded,
)
from .errors import (
    DuplicateKey,
    MediaConflict,
    MediaCorrupt,
    QueueFull,
    StaleVersion,
    StorageError,
    StorageFull,
    StorageInUse,
    StorageUnavailable,
    UnknownBackend,
)
from .registry import open_storage, register_backend

__all__ = [
    "MEDIA_CHUNK_MAX", "MEDIA_ID_SIZE", "MediaConflict", "MediaCorrupt", "MediaInfo",
    "DuplicateKey", "EnqueueRequest", "EnqueueResult", "OutboxEntry", "QueueFull", "QueueItem",
    "QueueQuota", "StaleVersion", "Storage", "StorageError", "StorageFull", "StorageInUse",
    "StorageUnavailable", "UnknownBackend", "UserRecord", "WatchAdded", "open_storage", "register_backend",
]
