"""The storage package's one base error and its subclasses."""


class StorageError(Exception):
    """Base of every error a storage backend raises on purpose."""


class StorageFull(StorageError):
    """The disk or the backend's capacity (LMDB map) is full. Nothing of the
    failed call was stored; earlier committed data is intact."""


class StorageUnavailable(StorageError):
    """The medium failed (EIO, a lost database connection): the call was not
    stored and may be retried later. Distinct from :class:`StorageFull`, which
    means "no room"."""


class QueueFull(StorageError):
    """A device queue is at its bound; nothing of the failed call was stored."""


class DuplicateKey(StorageError):
    """An uploaded one-time key id already exists for that device; nothing was stored."""


class StaleVersion(StorageError):
    """A device list whose version does not grow over the stored one."""


class MediaConflict(StorageError):
    """A media append that does not continue the stored blob (wrong offset, another
    size, past the end, another owner's unfinished upload); nothing was stored."""


class MediaCorrupt(StorageError):
    """The append that completed a blob found its SHA-256 differs from its media id;
    the blob was deleted."""


class StorageInUse(StorageError):
    """The store is already open in another process and this backend allows one
    process only (LMDB: the lock file ``wa-relay.lock`` is held); nothing was opened."""


class UnknownBackend(StorageError):
    """No backend is registered for the URL's scheme."""
