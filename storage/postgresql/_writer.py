"""Group commit for PostgreSQL: one writer task, many requests, one transaction.

Callers submit write ops (:class:`Op` subclasses, see :mod:`storage.postgresql._ops`)
into a bounded Trio memory channel and wait for their own answers. The writer
task takes the first submission, drains whatever else is queued (up to
``max_batch_ops`` ops or ``max_batch_bytes``), and runs the whole batch in **one**
transaction inside **one** ``trio.to_thread.run_sync`` call, on a connection
borrowed from the psycopg pool: the statements, the ``COMMIT`` and its WAL flush
happen in that thread, never on the event loop. Consecutive ops of one kind run
as one set-based step (``Op.run(tx, ops)``: e.g. every enqueue of the batch costs
five statements together), in submission order. Then every caller is woken.

**Every op gets its own answer.** Each kind validates before it writes (reading
the counter rows and dedupe ids it needs, under row locks), so a domain error
(``QueueFull``, ``DuplicateKey``, ``StaleVersion``, ``StorageFull`` for the
``max_bytes`` bound) answers that op alone and the others commit. A statement
that fails anyway aborts the transaction; the batch is then split:

* ``"connection"`` errors (:mod:`._errors`): the batch is run again on a fresh
  connection (the pool replaces broken ones), with a pause that doubles from
  50 ms, for up to ``retry_for`` seconds; then every op of it gets
  ``StorageUnavailable`` and the next batch starts afresh;
* ``"transient"`` errors (deadlock, serialization failure, a dedupe id another
  process committed after we looked) run the batch again at once, and
  :class:`LookAgain` (one-time keys locked by another process's claim) after a
  random pause of up to a millisecond per try, at most 50 times;
* ``"full"`` and ``"bug"`` errors: the batch is bisected until the failing op is
  alone; it gets ``StorageFull`` (no room) or ``StorageUnavailable``, and the
  others commit.

**Never acknowledged before commit; never applied twice.** Each attempt first
inserts a random *commit token* (``wa_commits``). When a connection is lost at
``COMMIT`` the outcome is unknown, so the next attempt inserts the same token
again: ``ON CONFLICT DO NOTHING`` waits for any transaction still holding it, and
a conflict proves the earlier attempt committed, so its answers stand and nothing
is run twice. No conflict proves it did not, and the batch runs again. Only when
the retry window passes without reaching the server can an op whose ``COMMIT``
was lost answer ``StorageUnavailable`` although it was stored (never the reverse):
retries carry dedupe ids where that matters. Tokens older than 10 minutes are
deleted once a minute.

Ops submitted concurrently may be applied in any order; ops of one task, which
awaits each before the next, are applied in order; a cancelled caller's op may
still be applied, entirely, before any later op.
"""

from __future__ import annotations

import logging
import random
import secrets
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from typing import Any, ClassVar

import psycopg
import psycopg_pool
import trio

from .._chains import Chains
from ..errors import StorageError, StorageFull, StorageUnavailable
from ._errors import classify, translate
from ._notify import Changes, payloads
from ._schema import USAGE_SLOTS

log = logging.getLogger(__name__)

FaultHook = Callable[[str, psycopg.Connection], None]
"""Test-only fault injection: called with ``"commit"`` just before each ``COMMIT``
and ``"committed"`` just after it, with the writer's connection; it may kill that
connection's backend or raise a ``psycopg.Error``."""

LOCK_DEVICES = (
    "SELECT 1 FROM devices WHERE (user_id, device_id) IN "
    "(SELECT * FROM unnest(%b::text[], %b::bigint[])) ORDER BY user_id, device_id FOR UPDATE")
"""Locks a batch's existing counter rows in key order before any op runs: the ops of
a batch run by kind in submission order (an enqueue, an ack, another enqueue...), so
without it two processes' writers lock the same rows in different orders and
deadlock (PostgreSQL breaks that after ``deadlock_timeout``, 1 s). Rows created by
the batch (a device's first envelope) are locked when created."""
TOKEN_TTL = "10 minutes"
TOKEN_SWEEP_EVERY = 60.0
LOOK_AGAIN_LIMIT = 50


class LookAgain(Exception):
    """Raised by an op's ``run`` when the database changed under it (another process
    committed a row it had looked for): the transaction is rolled back and run again."""


class Op:
    """One write request and its answer. Subclasses define :meth:`run`.

    Attributes:
        size: payload bytes (for the batch bound).
        adds: bytes the op may add to the accounted usage (the ``max_bytes`` bound).
        value, error: the answer, set by ``run``.
    """

    __slots__ = ("size", "adds", "value", "error")
    merge: ClassVar[bool] = False  # consecutive ops of this kind run as one step

    def __init__(self, size: int = 0, adds: int = 0) -> None:
        self.size = size
        self.adds = adds
        self.value: Any = None
        self.error: Exception | None = None

    @classmethod
    def run(cls, tx: Tx, ops: Sequence[Op]) -> None:
        """Apply ``ops`` (all of this class, in order) in ``tx``; set each answer.
        Raise only psycopg errors or :class:`LookAgain` (nothing may then be kept)."""
        raise NotImplementedError

    def devices(self) -> Iterable[tuple[str, int]]:
        """The ``(user_id, device_id)`` whose counter rows (``devices``) the op updates;
        the transaction locks them all first, in key order (see :data:`LOCK_DEVICES`)."""
        return ()


class Tx:
    """What an op's ``run`` sees: the connection (in pipeline mode), a cursor, and the
    usage accounting.

    Statements are pipelined: ``cur.execute`` only queues a statement, and the
    queue goes to the server in one round trip when a result is needed (``fetch``,
    or fetching from a cursor returned by ``query``) or at ``COMMIT``. So an op
    issues its reads with ``query``, then fetches them (one round trip for all),
    and queues its writes with ``cur.execute`` (sent with the ``COMMIT``).

    ``admit(n)`` is True (and counts ``n`` bytes) if ``n`` more bytes stay within
    ``max_bytes`` (always, without a bound); ``free(n)`` un-counts freed bytes.
    ``chains``: the refusals so far, by chain key (:mod:`storage._chains`): an
    enqueue skips a refused sender's later requests to the same devices.
    """

    def __init__(self, conn: psycopg.Connection, cur: psycopg.Cursor,
                 usage: psycopg.Cursor | None, limit: int | None,
                 chains: Chains | None = None) -> None:
        self.conn = conn
        self.cur = cur
        self.chains = Chains() if chains is None else chains
        self.delta = 0
        #: what this transaction changed that other processes care about (the notification)
        self.changes = Changes()
        #: devices that got envelopes in this transaction (``changes.queues``)
        self.enqueued: set[tuple[str, int]] = self.changes.queues
        self._usage = usage
        self._used: int | None = None
        self._limit = limit

    def admit(self, nbytes: int) -> bool:
        if self._limit is not None and self._usage is not None:
            if self._used is None:
                row = self._usage.fetchone()
                self._used = int(row[0]) if row else 0
            if self._used + self.delta + nbytes > self._limit:
                return False
        self.delta += nbytes
        return True

    def free(self, nbytes: int) -> None:
        self.delta -= nbytes

    def refuse_full(self, op: Op) -> None:
        op.error = StorageFull(f"storage full: {op.adds} more bytes exceed max_bytes={self._limit}")

    def query(self, query: Any, params: Any = None) -> psycopg.Cursor:
        """Queue ``query`` on a cursor of its own; fetch from it later."""
        cur = self.conn.cursor()
        cur.execute(query, params)
        return cur

    def fetch(self, query: Any, params: Any = None) -> list[tuple[Any, ...]]:
        """Run ``query`` now (a round trip, with whatever was queued) and return its rows."""
        self.cur.execute(query, params)
        return self.cur.fetchall()


class _Ticket:
    __slots__ = ("ops", "done")

    def __init__(self, ops: list[Op]) -> None:
        self.ops = ops
        self.done = trio.Event()


class _Failed(Exception):
    def __init__(self, exc: BaseException) -> None:
        super().__init__(repr(exc))
        self.exc = exc


class PgWriter:
    """The group-commit writer of one :class:`~storage.postgresql.PostgresStorage`.
    Run :meth:`serve` in a nursery.

    Args:
        pool: the open psycopg connection pool (autocommit connections on the schema).
        max_bytes: the accounted-bytes bound, or ``None``.
        retry_for: seconds a batch keeps retrying on connection errors.
        max_batch_ops, max_batch_bytes, queue_size: batch and channel bounds.
        notify: ``(channel, origin)``: every transaction that enqueued envelopes, stored
            a device list or put outbox entries also
            sends ``pg_notify`` (see :mod:`storage.postgresql._notify`); None: not.
        fault_hook: test-only, see :data:`FaultHook`.
    """

    def __init__(
        self, pool: psycopg_pool.ConnectionPool, *, max_bytes: int | None = None,
        retry_for: float = 5.0, max_batch_ops: int = 1024,
        max_batch_bytes: int = 16 * 1024 * 1024, queue_size: int = 1024,
        notify: tuple[str, str] | None = None, fault_hook: FaultHook | None = None,
    ) -> None:
        self._pool = pool
        self._limit = max_bytes
        self._retry_for = retry_for
        self._max_ops = max_batch_ops
        self._max_bytes = max_batch_bytes
        self._slot = secrets.randbelow(USAGE_SLOTS)
        self._next_sweep = time.monotonic() + TOKEN_SWEEP_EVERY
        self._notify = notify
        self._unannounced = False  # a committed batch's notification was lost
        self.fault_hook = fault_hook
        self._send, self._recv = trio.open_memory_channel[_Ticket](queue_size)
        self.stopped = trio.Event()
        #: Counters for tests and metrics.
        self.batches = 0
        self.ops = 0
        self.commits = 0
        self.retries = 0
        self.resolved_by_token = 0

    # -- callers

    async def submit(self, op: Op) -> Any:
        """Run ``op`` in the next batch; return its value or raise its error.

        Raises:
            trio.ClosedResourceError: the writer is closed.
            The op's domain error, StorageFull, StorageUnavailable.
        """
        [op] = await self.submit_many([op])
        if op.error is not None:
            raise op.error
        return op.value

    async def submit_many(self, ops: list[Op]) -> list[Op]:
        """Run ``ops`` in list order in the next batch; return them with their answers
        (``value``/``error``) set. Each op is atomic alone.

        Raises:
            trio.ClosedResourceError: the writer is closed.
        """
        if not ops:
            await trio.lowlevel.checkpoint()
            return ops
        ticket = _Ticket(ops)
        try:
            await self._send.send(ticket)
        except (trio.ClosedResourceError, trio.BrokenResourceError) as exc:
            raise trio.ClosedResourceError("storage is closed") from exc
        await ticket.done.wait()
        return ops

    def close(self) -> None:
        """Accept no more ops; :meth:`serve` commits what is queued, then returns."""
        self._send.close()

    # -- the writer task

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run batches until :meth:`close` and the queue is drained (or cancelled)."""
        batch: list[_Ticket] = []
        try:
            task_status.started()
            while True:
                try:
                    first = await self._recv.receive()
                except trio.EndOfChannel:
                    return
                batch = [first]
                nops = len(first.ops)
                nbytes = sum(op.size for op in first.ops)
                while nops < self._max_ops and nbytes < self._max_bytes:
                    try:
                        more = self._recv.receive_nowait()
                    except (trio.WouldBlock, trio.EndOfChannel):
                        break
                    batch.append(more)
                    nops += len(more.ops)
                    nbytes += sum(op.size for op in more.ops)
                ops = [op for ticket in batch for op in ticket.ops]
                # Not cancellable: the transaction always ends in commit or rollback.
                await trio.to_thread.run_sync(self._run_sync, ops)
                self.batches += 1
                self.ops += len(ops)
                for ticket in batch:
                    ticket.done.set()
                batch = []
        finally:
            stranded = list(batch)
            while True:
                try:
                    stranded.append(self._recv.receive_nowait())
                except (trio.WouldBlock, trio.EndOfChannel):
                    break
            self._recv.close()
            for ticket in stranded:
                if not ticket.done.is_set():
                    for op in ticket.ops:
                        op.error = trio.ClosedResourceError("storage writer stopped")
                    ticket.done.set()
            self.stopped.set()

    # -- in the writer thread

    def _run_sync(self, ops: list[Op]) -> None:
        # Segments are answered in op order (bisection runs the first half first),
        # so an op's chain keys are checked against earlier ops' refusals only.
        segments: deque[list[Op]] = deque([ops])
        chains = Chains()
        while segments:
            seg = segments.popleft()
            try:
                self._attempt(seg, chains)
            except _Failed as failed:
                if len(seg) == 1:
                    err = translate(failed.exc)
                    if not isinstance(err, StorageFull):
                        log.error("a storage op failed alone: %r", failed.exc)
                    seg[0].error = err
                else:
                    half = len(seg) // 2
                    segments.extendleft((seg[half:], seg[:half]))
                    continue
            for op in seg:
                keys = getattr(op, "chain", ())
                if keys:
                    chains.record(keys, op.error)

    def _attempt(self, seg: list[Op], chains: Chains) -> None:
        """Commit ``seg`` in one transaction, retrying as the module docstring says;
        set every answer. Raises _Failed for a "full" or "bug" error (nothing kept)."""
        token = secrets.token_bytes(16)
        deadline = time.monotonic() + self._retry_for
        pause = 0.05
        in_doubt: list[tuple[Any, Exception | None]] | None = None
        looks = 0
        while True:
            conn: psycopg.Connection | None = None
            try:
                conn = self._pool.getconn(timeout=max(deadline - time.monotonic(), 0.05))
                changes = self._transaction(conn, seg, token, in_doubt, chains)
                self.commits += 1
                self._announce(conn, changes)
                return
            except LookAgain:
                looks += 1
                if looks <= LOOK_AGAIN_LIMIT:
                    # A random pause so that two processes looking again do not collide
                    # again in step (the writer thread sleeps, not the event loop).
                    time.sleep(random.uniform(0, 0.001 * looks))
                    continue
                self._answer_all(seg, StorageUnavailable("the database kept changing under "
                                                         "this batch; try again"))
                return
            except (psycopg.Error, psycopg_pool.PoolTimeout) as exc:
                if isinstance(exc, _LostCommit):
                    in_doubt = exc.answers  # COMMIT was sent: keep its answers until we know
                kind = classify(exc, conn)
                if kind in ("full", "bug"):
                    raise _Failed(exc) from exc
                if kind == "connection" and conn is not None:
                    conn.close()  # e.g. on a read-only standby after a failover: replace it
                self.retries += 1
                if kind == "transient" and time.monotonic() > deadline:
                    log.error("a batch kept failing for %.1f s: %d ops refused: %r",
                              self._retry_for, len(seg), exc)
                    self._answer_all(seg, translate(exc))
                    return
                if kind == "connection":
                    if time.monotonic() + pause > deadline:
                        log.error("PostgreSQL unreachable for %.1f s: %d ops refused: %r",
                                  self._retry_for, len(seg), exc)
                        self._answer_all(seg, translate(exc))
                        return
                    log.warning("PostgreSQL connection lost (%s); retrying the batch", exc)
                    time.sleep(pause)  # the writer thread waits, never the event loop
                    pause = min(pause * 2, 1.0)
            finally:
                if conn is not None:
                    self._pool.putconn(conn)  # a closed or broken one is discarded

    def _announce(self, conn: psycopg.Connection, changes: Changes) -> None:
        """Send the notifications of a committed batch, in a transaction of their own
        (see :mod:`storage.postgresql._notify`); never raises: a failure makes the
        next announcement say "anything may have changed"."""
        if self._notify is None or not (changes or self._unannounced):
            return
        if self._unannounced:
            changes = Changes(changes.queues, changes.lists, changes.outbox, everything=True)
        channel, origin = self._notify
        try:
            conn.execute("SELECT pg_notify(%s, p) FROM unnest(%s::text[]) AS p",
                         (channel, payloads(origin, changes)))
        except psycopg.Error as exc:
            log.warning("could not notify the other processes (%s); the next "
                        "notification tells them to look at everything", exc)
            self._unannounced = True
            if classify(exc, conn) == "connection":
                conn.close()
            else:
                _rollback(conn)
            return
        self._unannounced = False

    def _transaction(
        self, conn: psycopg.Connection, seg: list[Op], token: bytes,
        in_doubt: list[tuple[Any, Exception | None]] | None, chains: Chains,
    ) -> Changes:
        """One attempt, pipelined (see :class:`Tx`): an enqueue batch costs two round
        trips, its reads and then its writes with the ``COMMIT``. Returns what it
        changed (for :meth:`_announce`) once committed with every answer set, or raises; an error once ``COMMIT`` was
        queued raises :class:`_LostCommit` (carrying the answers) when the connection
        is gone, since the outcome is then unknown."""
        cur = conn.cursor()
        commit_queued = False
        answers: list[tuple[Any, Exception | None]] = []
        try:
            with conn.pipeline():
                cur.execute("BEGIN")
                if in_doubt is not None:
                    # A retry after a lost COMMIT: first learn whether it landed.
                    cur.execute("INSERT INTO wa_commits (token) VALUES (%s) "
                                "ON CONFLICT DO NOTHING RETURNING 1", (token,))
                    if cur.fetchone() is None:
                        cur.execute("ROLLBACK")
                        for op, (value, error) in zip(seg, in_doubt, strict=True):
                            op.value, op.error = value, error
                        self.resolved_by_token += 1
                        return Changes(everything=True)  # what it changed went unannounced
                else:  # a fresh token cannot conflict: no need to wait for the answer
                    cur.execute("INSERT INTO wa_commits (token) VALUES (%s)", (token,))
                devs = sorted({dev for op in seg for dev in op.devices()})
                if devs:  # every counter row of the batch, locked first, in key order
                    cur.execute(LOCK_DEVICES, ([u for u, _ in devs], [d for _, d in devs]))
                usage = None
                if self._limit is not None:
                    usage = conn.cursor()
                    usage.execute("SELECT coalesce(sum(bytes), 0)::bigint FROM wa_usage")
                tx = Tx(conn, cur, usage, self._limit, chains.fork())
                for op in seg:
                    op.value, op.error = None, None
                start = 0
                while start < len(seg):
                    kind = type(seg[start])
                    end = start + 1
                    if kind.merge:
                        while end < len(seg) and type(seg[end]) is kind:
                            end += 1
                    kind.run(tx, seg[start:end])
                    start = end
                if tx.delta:
                    cur.execute("UPDATE wa_usage SET bytes = bytes + %s WHERE slot = %s",
                                (tx.delta, self._slot))
                now = time.monotonic()
                if now >= self._next_sweep:
                    self._next_sweep = now + TOKEN_SWEEP_EVERY
                    cur.execute(f"DELETE FROM wa_commits WHERE at < now() - interval '{TOKEN_TTL}'")
                answers = [(op.value, op.error) for op in seg]
                if self.fault_hook is not None:
                    self.fault_hook("commit", conn)
                commit_queued = True
                cur.execute("COMMIT")
            # Leaving the pipeline sent COMMIT and read every result: committed.
            if self.fault_hook is not None:
                try:
                    self.fault_hook("committed", conn)
                except psycopg.Error as exc:
                    raise _LostCommit(answers, exc) from exc
            return tx.changes
        except _LostCommit:
            raise
        except psycopg.Error as exc:
            if commit_queued and classify(exc, conn) == "connection":
                raise _LostCommit(answers, exc) from exc
            _rollback(conn)
            raise
        except BaseException:
            _rollback(conn)
            raise
        finally:
            cur.close()

    @staticmethod
    def _answer_all(seg: list[Op], err: StorageError) -> None:
        for op in seg:
            op.value, op.error = None, err


class _LostCommit(psycopg.OperationalError):
    """The connection was lost at COMMIT: the outcome is unknown until the token says."""

    def __init__(self, answers: list[tuple[Any, Exception | None]], exc: BaseException) -> None:
        super().__init__(f"connection lost at COMMIT: {exc}")
        self.answers = answers


def _rollback(conn: psycopg.Connection) -> None:
    if conn.broken or conn.closed:
        return
    try:
        conn.execute("ROLLBACK")
    except psycopg.Error:
        conn.close()  # the pool discards a closed connection
