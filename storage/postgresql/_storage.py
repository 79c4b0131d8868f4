"""``postgresql://``: a :class:`~storage.base.Storage` in a PostgreSQL database.

* **Driver.** psycopg 3 in its sync mode with ``psycopg_pool``, driven from Trio
  worker threads (psycopg's async mode needs asyncio). Nothing blocks the loop.
* **Writes** go through one group-commit writer per process
  (:mod:`storage.postgresql._writer`): many requests, one transaction, each
  answered alone; a lost connection is retried on a fresh one without ever
  acknowledging before commit or applying twice.
* **Reads** run one statement each on a pooled connection in a worker thread
  (autocommit: a read sees every commit that returned before it started).
* **Media** chunks live in the database (:mod:`storage.postgresql._media`).
* **Schema** versioned, migrated at open (:mod:`storage.postgresql._schema`).

Several processes may open the same schema: seqs come from the per-device counter
rows (locked by each enqueue), dedupe from a unique constraint, one-time-key
claims from ``DELETE ... RETURNING`` over ``FOR UPDATE SKIP LOCKED``.
"""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from functools import partial
from typing import Any, Self, TypeVar

import psycopg
import psycopg_pool
import trio

from .. import _keys as K
from .._chains import chain_keys
from .._quota import check_charges
from .._running import running_writer
from ..base import EnqueueRequest, EnqueueResult, OutboxEntry, QueueItem
from ..errors import StorageError, StorageUnavailable
from . import _ops as ops
from ._directory import PgDirectoryMixin, value_of
from ._errors import classify, translate
from ._extras import PgExtrasMixin
from ._handoff import PgHandoffMixin
from ._media import PgMediaMixin
from ._notify import (
    Changes,
    EphemeralCopy,
    channel_of,
    ephemeral_payloads,
    new_origin,
    serve_enqueue_watch,
    serve_watch,
)
from ._schema import migrate, set_search_path
from ._url import DEFAULT_SCHEMA, open_kwargs, split_url
from ._writer import FaultHook, PgWriter

T = TypeVar("T")

_SCHEMA_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")

class PostgresStorage(PgExtrasMixin, PgHandoffMixin, PgDirectoryMixin, PgMediaMixin):
    """A durable, shareable :class:`~storage.base.Storage` in PostgreSQL.

    Open it with :meth:`open` or :meth:`from_url` (async context managers that own
    the pool and the writer task); do not call the constructor yourself. Argument
    rules are the built-in backends' (``storage/_keys.py``); an outbox ``dest`` must
    not contain NUL. After :meth:`aclose`, methods raise ``trio.ClosedResourceError``.
    """

    def __init__(self, pool: psycopg_pool.ConnectionPool, writer: PgWriter, *, schema: str,
                 retry_for: float, limiter: trio.CapacityLimiter) -> None:
        self._pool = pool
        self.writer = writer
        self.schema = schema
        self._retry_for = retry_for
        self._limiter = limiter
        self._closed = False
        self._conninfo = ""
        self._origin = ""

    # -- opening

    @classmethod
    @asynccontextmanager
    async def open(
        cls, conninfo: str, *, schema: str = DEFAULT_SCHEMA, pool_min: int = 1,
        pool_max: int = 8, max_bytes: int | None = None, migrate: bool = True,
        retry_for: float = 5.0, connect_timeout: float = 10.0, max_batch_ops: int = 1024,
        notify: bool = False, fault_hook: FaultHook | None = None,
    ) -> AsyncIterator[Self]:
        """Connect, migrate (or check) the schema, start the writer; close on exit.

        Args:
            conninfo: a libpq connection string or URL (several hosts allowed, with
                ``target_session_attrs=read-write`` for failover).
            schema: the PostgreSQL schema of the node's tables (created if missing).
            pool_min, pool_max: connections kept open / at most (writer + readers).
            max_bytes: if given, the most accounted bytes (values plus fixed per-record
                overheads, media excluded) the store may hold: beyond it adding calls
                get StorageFull; freeing calls always work. A soft bound across
                processes (each checks the sum it last read).
            migrate: apply missing migrations (``False``: refuse an old schema).
            retry_for: seconds a write batch or a read retries a lost connection
                before answering StorageUnavailable.
            connect_timeout: seconds to reach the server at open.
            max_batch_ops: most ops per group-commit transaction.
            notify: send a notification with every commit that enqueued envelopes,
                stored a device list or put outbox entries, for :meth:`serve_watch`
                in other processes on the schema.
            fault_hook: test-only, see :data:`~storage.postgresql._writer.FaultHook`.

        Raises (on entry):
            StorageUnavailable: the server cannot be reached or refused us.
            SchemaError: the schema is newer than this code, or old with ``migrate=False``.
            ValueError: a bad schema name or bound.
        """
        if not _SCHEMA_NAME.fullmatch(schema):
            raise ValueError(f"bad schema name {schema!r}")
        if not 1 <= pool_min <= pool_max or pool_max < 2:
            raise ValueError("need 1 <= pool_min <= pool_max and pool_max >= 2")
        if max_bytes is not None and max_bytes < 0:
            raise ValueError("max_bytes must be >= 0")
        await trio.to_thread.run_sync(partial(
            cls.prepare, conninfo, schema, apply=migrate, connect_timeout=connect_timeout))
        pool = psycopg_pool.ConnectionPool(
            conninfo, min_size=pool_min, max_size=pool_max, open=False,
            kwargs={"autocommit": True}, configure=partial(set_search_path, schema=schema),
            name=f"wa-relay-{schema}", timeout=connect_timeout,
        )
        try:
            try:
                await trio.to_thread.run_sync(partial(pool.open, wait=True,
                                                      timeout=connect_timeout))
            except psycopg_pool.PoolTimeout as exc:
                raise StorageUnavailable(f"cannot open connections to PostgreSQL: {exc}") from exc
            origin = new_origin()
            writer = PgWriter(pool, max_bytes=max_bytes, retry_for=retry_for,
                              max_batch_ops=max_batch_ops, fault_hook=fault_hook,
                              notify=(channel_of(schema), origin) if notify else None)
            st = cls(pool, writer, schema=schema, retry_for=retry_for,
                     limiter=trio.CapacityLimiter(pool_max - 1))
            st._conninfo, st._origin = conninfo, origin
            async with running_writer(writer, st) as running:
                yield running
        finally:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(pool.close)

    @staticmethod
    def prepare(conninfo: str, schema: str, *, apply: bool = True,
                connect_timeout: float = 10.0) -> tuple[int, list[str]]:
        """Blocking: connect once and migrate (or check) ``schema``; return
        ``(version, applied)`` as :func:`~storage.postgresql._schema.migrate` does.

        Raises:
            StorageUnavailable: cannot connect, or the server refused a migration.
            SchemaError: see :meth:`open`.
        """
        try:
            with psycopg.connect(conninfo, autocommit=True,
                                 connect_timeout=max(int(connect_timeout), 1)) as conn:
                return migrate(conn, schema, apply=apply)
        except psycopg.Error as exc:
            raise StorageUnavailable(f"PostgreSQL: {exc}".strip()) from exc

    @classmethod
    def from_url(cls, url: str) -> AbstractAsyncContextManager[Self]:
        """``postgresql://[user[:password]@][host][:port][,host2...]/dbname[?params]``
        (``postgres://`` too). Our query options: ``schema`` (default ``wa_relay``),
        ``pool_min`` (1), ``pool_max`` (8), ``max_bytes`` (bytes, ``512M`` style
        allowed), ``migrate`` (true), ``retry_for`` (seconds, 5),
        ``connect_timeout_s`` (10); every other parameter goes to libpq (``host=``
        a Unix-socket directory, ``sslmode``, ``target_session_attrs``...).
        See :meth:`open`."""
        conninfo, opts = split_url(url)
        return cls.open(conninfo, **open_kwargs(opts))

    @classmethod
    async def migrate_url(cls, url: str) -> tuple[int, list[str]]:
        """Apply the missing migrations of the store at ``url`` (``wa-relay storage
        migrate``); return ``(version, applied)``. Raises as :meth:`prepare`."""
        conninfo, opts = split_url(url)
        schema = opts.get("schema", DEFAULT_SCHEMA)
        if not _SCHEMA_NAME.fullmatch(schema):
            raise ValueError(f"bad schema name {schema!r}")
        return await trio.to_thread.run_sync(partial(cls.prepare, conninfo, schema))

    @property
    def notifies(self) -> bool:
        """True if this instance was opened with ``notify=True`` (its commits tell
        other processes on the schema what changed)."""
        return self.writer._notify is not None

    async def serve_watch(
        self, on_change: Callable[[Changes | None], None], *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Call ``on_change(changes)`` whenever *another* storage instance on this
        schema (opened with ``notify=True``) committed changes (a
        :class:`~storage.postgresql._notify.Changes`: device queues that got
        envelopes, users whose device list was stored, outbox destinations that got
        entries), and ``on_change(None)`` after a lost listening connection came back
        (anything may have changed meanwhile). Runs until cancelled;
        ``task_status.started()`` once listening. See :mod:`storage.postgresql._notify`.

        Raises:
            StorageUnavailable: the first connection or LISTEN failed.
        """
        self._check_open()
        try:
            await serve_watch(self._conninfo, self.schema, self._origin, on_change,
                              task_status=task_status)
        except psycopg.Error as exc:
            raise translate(exc) from exc

    async def announce_ephemeral(
        self, copies: list[tuple[str, int, bytes, str, int, int, bytes]],
    ) -> None:
        """Hand ephemeral copies (typing indicators) to the other processes on this
        schema (their :meth:`serve_watch` callbacks get them in
        :attr:`~storage.postgresql._notify.Changes.ephemeral`); nothing is stored. Does
        nothing unless opened with ``notify=True``.

        Args:
            copies: ``(user_id, device_id, msg_id, sender_user, sender_device, ts,
                body)`` each, the fields of :class:`~storage.postgresql._notify.EphemeralCopy`.

        Raises:
            StorageUnavailable: the notification could not be sent.
        """
        self._check_open()
        if not self.notifies or not copies:
            return
        notes = ephemeral_payloads(self._origin, [EphemeralCopy(*c) for c in copies])
        channel = channel_of(self.schema)

        def send(conn: psycopg.Connection, attempt: int) -> None:
            conn.execute("SELECT pg_notify(%s, p) FROM unnest(%s::text[]) AS p", (channel, notes))

        await self._with_conn(send)

    async def serve_enqueue_watch(
        self, on_enqueued: Callable[[set[tuple[str, int]] | None], None], *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """:meth:`serve_watch` for device queues only: ``on_enqueued(devices)`` (a set
        of ``(user_id, device_id)``), ``on_enqueued(None)`` after a reconnect.

        Raises:
            StorageUnavailable: the first connection or LISTEN failed.
        """
        self._check_open()
        try:
            await serve_enqueue_watch(self._conninfo, self.schema, self._origin, on_enqueued,
                                      task_status=task_status)
        except psycopg.Error as exc:
            raise translate(exc) from exc

    # -- plumbing

    def _check_open(self) -> None:
        if self._closed:
            raise trio.ClosedResourceError("storage is closed")

    async def _with_conn(self, fn: Callable[[psycopg.Connection, int], T]) -> T:
        """Run ``fn(conn, attempt)`` in a worker thread on a pooled connection; retry
        it on a fresh connection while connections are lost, for ``retry_for``
        seconds. ``fn`` must be safe to run again (its transaction rolled back).

        Raises:
            trio.ClosedResourceError: the storage is closed.
            StorageUnavailable, StorageFull: translated psycopg errors.
            whatever StorageError ``fn`` raises.
        """
        self._check_open()
        return await trio.to_thread.run_sync(self._with_conn_sync, fn, limiter=self._limiter)

    def _with_conn_sync(self, fn: Callable[[psycopg.Connection, int], T]) -> T:
        deadline = time.monotonic() + self._retry_for
        pause = 0.05
        attempt = 0
        while True:
            conn = None
            try:
                conn = self._pool.getconn(timeout=max(deadline - time.monotonic(), 0.05))
                return fn(conn, attempt)
            except (psycopg.Error, psycopg_pool.PoolTimeout) as exc:
                kind = classify(exc, conn)
                if kind == "connection" and conn is not None:
                    conn.close()  # e.g. on a read-only standby after a failover: replace it
                if kind not in ("connection", "transient") or time.monotonic() + pause > deadline:
                    raise translate(exc) from exc
                attempt += 1
                time.sleep(pause)
                pause = min(pause * 2, 1.0)
            finally:
                if conn is not None:
                    self._pool.putconn(conn)  # a closed or broken one is discarded

    async def _fetch(self, query: str, params: Any = None) -> list[tuple[Any, ...]]:
        def run(conn: psycopg.Connection, attempt: int) -> list[tuple[Any, ...]]:
            with conn.cursor(binary=True) as cur:
                return cur.execute(query, params).fetchall()  # type: ignore[arg-type]
        return await self._with_conn(run)

    async def aclose(self) -> None:
        """Commit queued writes and stop the writer. Idempotent. The pool is closed
        when :meth:`open`'s block exits."""
        if not self._closed:
            self._closed = True
            self.writer.close()
        with trio.CancelScope(shield=True):
            await self.writer.stopped.wait()

    @staticmethod
    def _dev(user_id: str, device_id: int) -> tuple[str, int]:
        K.check_user_id(user_id)
        return user_id, K.check_device_id(device_id)
    # -- queues

    async def enqueue(
        self, items: list[tuple[str, int, bytes]], *, dedupe: bytes | None = None,
        max_queue: int | None = None, now: float | None = None,
    ) -> list[int] | None:
        """See :meth:`storage.base.Storage.enqueue`."""
        [answer] = await self.enqueue_many([EnqueueRequest(items, dedupe, max_queue, now)])
        if isinstance(answer, StorageError):
            raise answer
        return answer

    async def enqueue_many(self, requests: list[EnqueueRequest]) -> list[EnqueueResult]:
        """See :meth:`storage.base.Storage.enqueue_many`: one submission to the group
        commit; seqs come from the per-device counter rows in the database.

        Raises:
            ValueError, TypeError: a malformed argument in any request; nothing stored.
            trio.ClosedResourceError: the storage is closed.
        """
        token = object()
        batch = []
        for req in requests:
            items = [(*self._dev(u, d), K.check_bytes("envelope", env)) for u, d, env in req.items]
            dd = None if req.dedupe is None else K.check_dedupe(req.dedupe)
            ts = time.time() if req.now is None else float(req.now)
            batch.append(ops.Enqueue(items, dd, req.max_queue, ts, check_charges(req.charges),
                                     req.quota, chain_keys(token, req)))
        self._check_open()
        return [_answer(op) for op in await self.writer.submit_many(batch)]

    async def read_queue(
        self, user_id: str, device_id: int, after_seq: int = 0, limit: int = 256
    ) -> list[QueueItem]:
        """See :meth:`storage.base.Storage.read_queue`."""
        user, dev = self._dev(user_id, device_id)
        if limit <= 0:
            self._check_open()
            await trio.lowlevel.checkpoint()
            return []
        rows = await self._fetch(
            "SELECT seq, ts, envelope FROM queue WHERE user_id = %s AND device_id = %s "
            "AND seq > %s ORDER BY seq LIMIT %s",
            (user, dev, ops._clamp(after_seq), min(limit, ops.MAX_BIGINT)))
        return [QueueItem(seq, ts, bytes(env)) for seq, ts, env in rows]

    async def queue_length(self, user_id: str, device_id: int) -> int:
        """See :meth:`storage.base.Storage.queue_length`."""
        user, dev = self._dev(user_id, device_id)
        rows = await self._fetch(
            "SELECT queue_len FROM devices WHERE user_id = %s AND device_id = %s", (user, dev))
        return int(rows[0][0]) if rows else 0

    async def ack(self, user_id: str, device_id: int, up_to_seq: int) -> int:
        """See :meth:`storage.base.Storage.ack`."""
        [gone] = await self.ack_many([(user_id, device_id, up_to_seq)])
        return gone

    async def ack_many(self, acks: list[tuple[str, int, int]]) -> list[int]:
        """See :meth:`storage.base.Storage.ack_many`: all acks of a batch in one
        statement. Freeing: never refused for room.

        Raises:
            StorageUnavailable: the database stayed unreachable; acks are idempotent.
        """
        batch = [ops.Ack(*self._dev(u, d), int(seq)) for u, d, seq in acks]
        self._check_open()
        return [value_of(op) for op in await self.writer.submit_many(batch)]

    async def purge_device(self, user_id: str, device_id: int) -> int:
        """See :meth:`storage.base.Storage.purge_device`. Keeps the seq counter row."""
        user, dev = self._dev(user_id, device_id)
        self._check_open()
        return await self.writer.submit(ops.PurgeDevice(user, dev))

    async def expire(self, older_than: float) -> int:
        """See :meth:`storage.base.Storage.expire`. BRIN indexes on ``ts`` keep the
        cost near what expires."""
        self._check_open()
        return await self.writer.submit(ops.Expire(float(older_than)))

    # -- outbox

    async def outbox_put(self, dest: str, payload: bytes) -> int:
        """See :meth:`storage.base.Storage.outbox_put`."""
        [oid] = await self.outbox_put_many([(dest, payload)])
        return oid

    async def outbox_put_many(self, entries: list[tuple[str, bytes]]) -> list[int]:
        """See :meth:`storage.base.Storage.outbox_put_many`. Ids come from the sequence
        ``outbox_ids`` (never reused).

        Raises:
            StorageFull, StorageUnavailable: nothing stored.
            ValueError, TypeError: a malformed argument (a ``dest`` with NUL).
        """
        raw = []
        for dest, payload in entries:
            if not isinstance(dest, str) or "\x00" in dest:
                raise ValueError(f"malformed outbox dest {dest!r}")
            raw.append((dest, K.check_bytes("payload", payload)))
        self._check_open()
        if not raw:
            await trio.lowlevel.checkpoint()
            return []
        return await self.writer.submit(ops.OutboxPut(raw))

    async def outbox_list(self, dest: str | None = None, limit: int = 256) -> list[OutboxEntry]:
        """See :meth:`storage.base.Storage.outbox_list`."""
        if limit <= 0:
            self._check_open()
            await trio.lowlevel.checkpoint()
            return []
        if dest is None:
            rows = await self._fetch("SELECT id, dest, payload, attempts FROM outbox "
                                     "ORDER BY id LIMIT %s", (min(limit, ops.MAX_BIGINT),))
        else:
            rows = await self._fetch("SELECT id, dest, payload, attempts FROM outbox "
                                     "WHERE dest = %s ORDER BY id LIMIT %s",
                                     (dest, min(limit, ops.MAX_BIGINT)))
        return [OutboxEntry(i, d, bytes(p), a) for i, d, p, a in rows]

    async def outbox_retry(self, outbox_id: int) -> None:
        """See :meth:`storage.base.Storage.outbox_retry`."""
        self._check_open()
        if 0 < outbox_id <= ops.MAX_BIGINT:
            await self.writer.submit(ops.OutboxRetry(outbox_id))
        else:
            await trio.lowlevel.checkpoint()

    async def outbox_delete(self, outbox_id: int) -> None:
        """See :meth:`storage.base.Storage.outbox_delete`."""
        await self.outbox_delete_many([outbox_id])

    async def outbox_delete_many(self, outbox_ids: list[int]) -> None:
        """See :meth:`storage.base.Storage.outbox_delete_many`. Freeing."""
        ids = [i for i in outbox_ids if 0 < i <= ops.MAX_BIGINT]
        self._check_open()
        if ids:
            await self.writer.submit(ops.OutboxDelete(ids))
        else:
            await trio.lowlevel.checkpoint()


def _answer(op: ops.Op) -> Any:
    """A batch answer: the value, or the StorageError refusing it; other errors raise."""
    if op.error is None:
        return op.value
    if isinstance(op.error, StorageError):
        return op.error
    raise op.error

