"""Cross-process wake-ups: "envelopes were enqueued for these devices".

The first piece of a home served by several relay processes over one database
(see docs/operations.md, "One home, several processes"). With ``notify=True``
the writer adds ``pg_notify(channel, payload)`` to every transaction that
enqueued envelopes; PostgreSQL delivers a notification only when (and if) that
transaction commits, to every session that ``LISTEN``\\ s on the channel, in commit
order. :func:`serve_enqueue_watch` is such a session: it calls back with the
devices that *other* processes enqueued for, so the relay can wake their
delivery tasks at once.

Channel: ``wa.<schema>`` (at most 63 bytes). Payload: ``<origin>|user:dev,user:dev...``
where ``origin`` is a random token per storage instance (a process skips its own
notifications: it woke its devices itself), split into several notifications so
that each stays under PostgreSQL's 8000-byte payload limit.

The listening session runs on the event loop: ``trio.lowlevel.wait_readable`` on
libpq's socket, then the non-blocking ``consume_input`` and ``notifies`` of
psycopg's low-level connection. A lost connection is re-opened (in a worker
thread, with a pause that doubles up to 5 s), and the callback gets ``None``:
notifications may have been missed meanwhile, so every local device should look
at its queue once.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable

import psycopg
import trio
from psycopg import sql

log = logging.getLogger(__name__)

PAYLOAD_MAX = 7900  # bytes per notification (PostgreSQL's limit is 8000)
Devices = set[tuple[str, int]]


def channel_of(schema: str) -> str:
    """The notification channel of a schema's enqueues."""
    return f"wa.{schema}"[:63]


def new_origin() -> str:
    """A random token naming one storage instance in its notifications."""
    return secrets.token_hex(6)


def payloads(origin: str, devices: Devices) -> list[str]:
    """``devices`` as notification payloads of at most :data:`PAYLOAD_MAX` bytes."""
    out: list[str] = []
    part: list[str] = []
    size = len(origin) + 1
    for user, dev in sorted(devices):
        item = f"{user}:{dev}"
        if part and size + len(item) + 1 > PAYLOAD_MAX:
            out.append(f"{origin}|{','.join(part)}")
            part, size = [], len(origin) + 1
        part.append(item)
        size += len(item) + 1
    if part:
        out.append(f"{origin}|{','.join(part)}")
    return out


def parse(payload: str) -> tuple[str, Devices]:
    """``(origin, devices)`` of a payload. Raises ValueError if it is malformed."""
    origin, _, body = payload.partition("|")
    devices: Devices = set()
    for item in body.split(",") if body else ():
        user, _, dev = item.rpartition(":")
        devices.add((user, int(dev)))
    return origin, devices


async def serve_enqueue_watch(
    conninfo: str, schema: str, origin: str, on_enqueued: Callable[[Devices | None], None],
    *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """LISTEN for enqueues into ``schema`` by other storage instances; runs until
    cancelled. Calls ``on_enqueued(devices)`` per notification not from ``origin``,
    and ``on_enqueued(None)`` after a reconnect (some may have been missed).
    ``task_status.started()`` once the first LISTEN is in place.

    Raises:
        psycopg.Error: the first connection or LISTEN failed (later failures reconnect).
    """
    channel = channel_of(schema)
    started = False
    pause = 0.1
    while True:
        try:
            conn = await trio.to_thread.run_sync(_listen, conninfo, channel)
        except psycopg.Error as exc:
            if not started:
                raise
            log.warning("enqueue watch: cannot reconnect (%s); retrying", exc)
            await trio.sleep(pause)
            pause = min(pause * 2, 5.0)
            continue
        try:
            if started:
                on_enqueued(None)  # notifications may have been missed while we were away
            else:
                started = True
                task_status.started()
            pause = 0.1
            await _pump(conn, origin, on_enqueued)
        except psycopg.Error as exc:
            log.warning("enqueue watch: connection lost (%s); reconnecting", exc)
        finally:
            conn.close()


def _listen(conninfo: str, channel: str) -> psycopg.Connection:
    conn = psycopg.connect(conninfo, autocommit=True)
    try:
        conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))
    except BaseException:
        conn.close()
        raise
    return conn


async def _pump(conn: psycopg.Connection, origin: str,
                on_enqueued: Callable[[Devices | None], None]) -> None:
    """Deliver notifications until the connection fails (raises psycopg.Error)."""
    pgconn = conn.pgconn
    while True:
        await trio.lowlevel.wait_readable(pgconn.socket)
        pgconn.consume_input()  # non-blocking; raises OperationalError on a lost connection
        if pgconn.status != psycopg.pq.ConnStatus.OK:
            raise psycopg.OperationalError("the listening connection is closed")
        while (note := pgconn.notifies()) is not None:
            try:
                sender, devices = parse(note.extra.decode())
            except ValueError:
                log.warning("enqueue watch: malformed notification ignored")
                continue
            if sender != origin and devices:
                on_enqueued(devices)
