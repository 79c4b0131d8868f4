"""How the PostgreSQL backend reads a psycopg error: which ones a retry on a fresh
connection can cure, which mean "no room", and which are bugs.

Kinds (:func:`classify`):

* ``"connection"``: the connection is gone or unusable (server restart or crash,
  ``pg_terminate_backend``, network loss, a failover that left us on a read-only
  standby, no connection from the pool in time). The transaction did not commit,
  or its outcome is unknown (lost at ``COMMIT``); the writer finds out which with
  its commit token (see :mod:`storage.postgresql._writer`).
* ``"transient"``: the server refused this transaction but the connection is fine
  (serialization failure, deadlock, lock or statement timeout, or a dedupe id that
  another process committed after we looked: ``dedupe_pkey``): run it again.
* ``"full"``: no room (``53100 disk_full``, ``54000`` a value over a limit).
* ``"bug"``: anything else (a malformed statement, a violated constraint that
  validation should have caught): that op alone fails.
"""

from __future__ import annotations

import psycopg
import psycopg.errors as pe
import psycopg_pool

from ..errors import StorageError, StorageFull, StorageUnavailable

_CONNECTION = (
    pe.AdminShutdown, pe.CrashShutdown, pe.CannotConnectNow, pe.ConnectionException,
    pe.ReadOnlySqlTransaction, pe.TooManyConnections, pe.IdleSessionTimeout,
    psycopg.InterfaceError, psycopg_pool.PoolTimeout,
)
_TRANSIENT = (pe.TransactionRollback, pe.SerializationFailure, pe.DeadlockDetected,
              pe.LockNotAvailable, pe.QueryCanceled, pe.OutOfMemory)
# (psycopg derives DeadlockDetected from OperationalError, not TransactionRollback.)
_FULL = (pe.DiskFull, pe.ProgramLimitExceeded)
LOOK_AGAIN_CONSTRAINTS = frozenset({"dedupe_pkey"})
"""Unique constraints whose violation means "another process was first": look again."""


def classify(exc: BaseException, conn: psycopg.Connection | None = None) -> str:
    """``"connection"``, ``"transient"``, ``"full"`` or ``"bug"`` for ``exc`` (see module)."""
    if conn is not None and (conn.broken or conn.closed):
        return "connection"
    if isinstance(exc, _CONNECTION):
        return "connection"
    if isinstance(exc, _TRANSIENT):
        return "transient"
    if (isinstance(exc, pe.UniqueViolation)
            and exc.diag.constraint_name in LOOK_AGAIN_CONSTRAINTS):
        return "transient"
    if isinstance(exc, _FULL):
        return "full"
    if isinstance(exc, psycopg.OperationalError) and getattr(exc, "sqlstate", None) is None:
        return "connection"  # raised by libpq itself: the socket is gone
    return "bug"


def translate(exc: BaseException) -> StorageError:
    """The storage error for ``exc``, chained to it: ``StorageFull`` for no room,
    ``StorageUnavailable`` for everything else."""
    err: StorageError
    if classify(exc) == "full":
        err = StorageFull(f"storage full: {exc}")
    else:
        err = StorageUnavailable(f"PostgreSQL failed: {type(exc).__name__}: {exc}")
    err.__cause__ = exc
    return err
