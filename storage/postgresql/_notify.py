"""Cross-process wake-ups: "envelopes were enqueued for these devices", "these
users' device lists changed", "these outbox destinations got entries".

What a home served by several relay processes over one database needs (see
docs/operations.md, "One home, several processes"). With ``notify=True`` the
writer sends ``pg_notify(channel, payload)`` after every commit that enqueued
envelopes, stored a device list or put outbox entries; PostgreSQL delivers it to
every session that ``LISTEN``\\ s on the channel. :func:`serve_watch` is such a
session: it calls back with the :class:`Changes` that *other* processes
committed, so the relay can wake delivery tasks, drop cached device lists and
drain the outbox at once.

Channel: ``wa.<schema>`` (at most 63 bytes). Payload: ``<origin>|<kind>|<items>``,
``origin`` a random token per storage instance (a process skips its own
notifications: it acted on them itself), ``kind`` one of ``q`` (items
``user:device``), ``l`` (user ids), ``o`` (outbox destinations, percent-encoded),
``a`` (no items: anything may have changed), ``e`` (ephemeral copies to push, see
:class:`EphemeralCopy`: nothing was committed, :func:`ephemeral_payloads`), items
joined by ``,``; split into
several notifications so that each stays under PostgreSQL's 8000-byte payload
limit.

The writer sends them right *after* its ``COMMIT``, in a transaction of their
own, not inside the data's: PostgreSQL serialises the commits of all
transactions that notify (a database-wide lock held through the commit's WAL
flush), which would take group commit across processes away. A notification
transaction writes no WAL, so it holds that lock only for a moment. If one is
lost (the connection broke right after the commit), the next one carries
``a``.

The listening session runs on the event loop: ``trio.lowlevel.wait_readable`` on
libpq's socket, then the non-blocking ``consume_input`` and ``notifies`` of
psycopg's low-level connection. A lost connection is re-opened (in a worker
thread, with a pause that doubles up to 5 s), and the callback gets ``None``:
notifications may have been missed meanwhile, so every local device should look
at its queue once, and cached lists be dropped.
"""

from __future__ import annotations

import base64
import binascii
import logging
import secrets
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from urllib.parse import quote, unquote

import psycopg
import trio
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

log = logging.getLogger(__name__)

CONNECT_TIMEOUT = 10  # seconds for the listening connection to reach the server
LISTEN_KEEPALIVES = {"keepalives": 1, "keepalives_idle": 10, "keepalives_interval": 5,
                     "keepalives_count": 3}
"""libpq TCP keepalives of the listening connection: a dead peer noticed within ~25 s."""
PAYLOAD_MAX = 7900  # bytes per notification (PostgreSQL's limit is 8000)
Devices = set[tuple[str, int]]


@dataclass(frozen=True)
class EphemeralCopy:
    """One copy of an ephemeral send (typing...) for a device that may be connected to
    another process: ``user_id``/``device_id`` the recipient device, then the envelope's
    ``msg_id`` (16 bytes), ``sender_user``, ``sender_device``, ``ts`` (ms), ``body``."""

    user_id: str
    device_id: int
    msg_id: bytes
    sender_user: str
    sender_device: int
    ts: int
    body: bytes

    def item(self) -> str:
        """The copy as one ``e`` item (``:``-separated; bytes in base64)."""
        return ":".join((self.user_id, str(self.device_id), self.msg_id.hex(), self.sender_user,
                         str(self.sender_device), str(self.ts),
                         base64.b64encode(self.body).decode()))

    @classmethod
    def parse(cls, item: str) -> EphemeralCopy:
        """Inverse of :meth:`item`. Raises ValueError if it is malformed."""
        try:
            user, dev, msg_id, sender, sdev, ts, body = item.split(":")
            return cls(user, int(dev), bytes.fromhex(msg_id), sender, int(sdev), int(ts),
                       base64.b64decode(body, validate=True))
        except binascii.Error as exc:
            raise ValueError(f"bad body in an ephemeral item: {exc}") from exc


@dataclass
class Changes:
    """What one or more commits of another process changed.

    Attributes:
        queues: ``(user_id, device_id)`` of device queues that got envelopes.
        lists: user ids whose device list was stored.
        outbox: outbox destinations that got entries.
        everything: anything may have changed (a commit whose notification could
            not be sent): act as after a lost listening connection.
        ephemeral: copies of ephemeral sends to push to devices connected here
            (nothing committed; lost if no process has the device).
    """

    queues: Devices = field(default_factory=set)
    lists: set[str] = field(default_factory=set)
    outbox: set[str] = field(default_factory=set)
    everything: bool = False
    ephemeral: list[EphemeralCopy] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.queues or self.lists or self.outbox or self.everything
                    or self.ephemeral)


def channel_of(schema: str) -> str:
    """The notification channel of a schema's changes."""
    return f"wa.{schema}"[:63]


def new_origin() -> str:
    """A random token naming one storage instance in its notifications."""
    return secrets.token_hex(6)


def _split(origin: str, kind: str, items: Iterable[str]) -> list[str]:
    out: list[str] = []
    part: list[str] = []
    head = len(origin) + len(kind) + 2
    size = head
    for item in items:
        if part and size + len(item) + 1 > PAYLOAD_MAX:
            out.append(f"{origin}|{kind}|{','.join(part)}")
            part, size = [], head
        part.append(item)
        size += len(item) + 1
    if part:
        out.append(f"{origin}|{kind}|{','.join(part)}")
    return out


def payloads(origin: str, changes: Changes | Devices) -> list[str]:
    """``changes`` (or a set of devices: queues only) as notification payloads of
    at most :data:`PAYLOAD_MAX` bytes."""
    if not isinstance(changes, Changes):
        changes = Changes(queues=set(changes))
    return [*([f"{origin}|a|"] if changes.everything else []),
            *_split(origin, "q", (f"{u}:{d}" for u, d in sorted(changes.queues))),
            *_split(origin, "l", sorted(changes.lists)),
            *_split(origin, "o", (quote(d, safe="") for d in sorted(changes.outbox)))]


def ephemeral_payloads(origin: str, copies: Iterable[EphemeralCopy]) -> list[str]:
    """Ephemeral copies as ``e`` notification payloads of at most :data:`PAYLOAD_MAX`
    bytes (a copy too large for one is left out: it is only a typing indicator)."""
    items = [c.item() for c in copies]
    return _split(origin, "e", (i for i in items if len(i) + len(origin) + 3 <= PAYLOAD_MAX))


def parse(payload: str) -> tuple[str, Changes]:
    """``(origin, changes)`` of a payload. Raises ValueError if it is malformed."""
    origin, _, rest = payload.partition("|")
    kind, sep, body = rest.partition("|")
    if not sep:
        raise ValueError("no kind in a notification payload")
    items = body.split(",") if body else []
    changes = Changes()
    if kind == "q":
        for item in items:
            user, _, dev = item.rpartition(":")
            changes.queues.add((user, int(dev)))
    elif kind == "l":
        changes.lists.update(items)
    elif kind == "o":
        changes.outbox.update(unquote(i) for i in items)
    elif kind == "a":
        changes.everything = True
    elif kind == "e":
        changes.ephemeral.extend(EphemeralCopy.parse(i) for i in items)
    else:
        raise ValueError(f"unknown notification kind {kind!r}")
    return origin, changes


async def serve_enqueue_watch(
    conninfo: str, schema: str, origin: str, on_enqueued: Callable[[Devices | None], None],
    *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """:func:`serve_watch` for queues only: ``on_enqueued(devices)`` per notification
    naming devices, ``on_enqueued(None)`` after a reconnect."""
    def on_change(changes: Changes | None) -> None:
        if changes is None:
            on_enqueued(None)
        elif changes.queues:
            on_enqueued(changes.queues)

    await serve_watch(conninfo, schema, origin, on_change, task_status=task_status)


async def serve_watch(
    conninfo: str, schema: str, origin: str, on_change: Callable[[Changes | None], None],
    *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """LISTEN for changes to ``schema`` by other storage instances; runs until
    cancelled. Calls ``on_change(changes)`` per notification not from ``origin``,
    and ``on_change(None)`` after a reconnect (some may have been missed).
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
            log.warning("change watch: cannot reconnect (%s); retrying", exc)
            await trio.sleep(pause)
            pause = min(pause * 2, 5.0)
            continue
        try:
            if started:
                on_change(None)  # notifications may have been missed while we were away
            else:
                started = True
                task_status.started()
            pause = 0.1
            await _pump(conn, origin, on_change)
        except psycopg.Error as exc:
            log.warning("change watch: connection lost (%s); reconnecting", exc)
        finally:
            conn.close()


def _listen(conninfo: str, channel: str) -> psycopg.Connection:
    # TCP keepalives (unless the URL sets them): the listener only reads, so a silently
    # dead server or route would otherwise go unnoticed for hours (Unix sockets: ignored).
    given = conninfo_to_dict(conninfo)
    keepalives = {k: v for k, v in LISTEN_KEEPALIVES.items() if k not in given}
    conn = psycopg.connect(conninfo, autocommit=True, connect_timeout=CONNECT_TIMEOUT,
                           **keepalives)
    try:
        conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))
    except BaseException:
        conn.close()
        raise
    return conn


async def _pump(conn: psycopg.Connection, origin: str,
                on_change: Callable[[Changes | None], None]) -> None:
    """Deliver notifications until the connection fails (raises psycopg.Error)."""
    pgconn = conn.pgconn
    while True:
        await trio.lowlevel.wait_readable(pgconn.socket)
        pgconn.consume_input()  # non-blocking; raises OperationalError on a lost connection
        if pgconn.status != psycopg.pq.ConnStatus.OK:
            raise psycopg.OperationalError("the listening connection is closed")
        while (note := pgconn.notifies()) is not None:
            try:
                sender, changes = parse(note.extra.decode())
            except ValueError:
                log.warning("change watch: malformed notification ignored")
                continue
            if sender != origin and changes:
                on_change(changes)
