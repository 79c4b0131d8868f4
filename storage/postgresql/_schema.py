"""The PostgreSQL schema of a wa-relay node and its migrations.

Every table lives in one PostgreSQL schema (``?schema=NAME`` in the storage URL,
default ``wa_relay``), so several nodes, or test runs, can share a database.
``wa_schema`` records which migrations were applied; :func:`migrate` applies the
missing ones in order, each in its own transaction, under an advisory lock so
that relay processes starting together never race (the second waits, then finds
nothing to do). A database whose schema is newer than this code is refused.

Layout (version 1), ``user_id`` and ``dest`` as ``text COLLATE "C"`` so that
ordering is by code point, as Python sorts ``str``:

=================  ==============================================================
``device_lists``   ``user_id`` -> ``version`` (``numeric(20)``: a u64), ``blob``
``watchers``       (``user_id``, ``watcher``)
``devices``        (``user_id``, ``device_id``) -> ``last_seq``, ``queue_len``: the
                   per-device counter row; ``last_seq`` never goes down, so seqs
                   are never reused, and the row is locked by every enqueue
``queue``          (``user_id``, ``device_id``, ``seq``) -> ``ts``, ``envelope``;
                   BRIN index on ``ts`` for expiry (rows arrive in time order)
``dedupe``         ``id`` (primary key: the unique constraint) -> ``ts``; BRIN on ts
``otk``            (``user_id``, ``device_id``, ``key_id`` bytea) -> ``key``
``otk_claimed``    (``user_id``, ``device_id``, ``key_id``): claimed ids, refused again
``fallback_keys``  (``user_id``, ``device_id``) -> ``key_id``, ``key``
``outbox``         ``id`` (from sequence ``outbox_ids``) -> ``dest``, ``payload``,
                   ``attempts``; index (``dest``, ``id``)
``media``          ``id`` -> ``size``, ``received``, ``complete``, ``owner``, ``ts``
``media_chunks``   (``media_id``, ``off``) -> ``data`` (one row per appended chunk)
``wa_usage``       16 slots of accounted bytes (the ``max_bytes`` bound)
``wa_meta``        ``key`` -> ``value``: ``media_used``
``wa_commits``     ``token`` -> ``at``: one row per committed write batch, so a
                   batch whose ``COMMIT`` was lost can tell whether it landed
``wa_marks``       ``name`` -> ``value``: durable handoff markers (version 3)
``dedupe_users``   (``user_id``, ``id``): the users an enqueue with dedupe id ``id``
                   queued copies for (version 4; the id moves with each user's
                   home); deleted with the ``dedupe`` row (``ON DELETE CASCADE``).
                   ``dedupe.imported``: only ``import_user`` stored the id (a
                   duplicate only for its linked users)
=================  ==============================================================

Version 5 gives ``watchers`` a ``ts`` (last refresh, seconds; existing pairs get the
time of the migration) and indexes (``user_id``, ``ts``, ``watcher``) for the least
recently refreshed watcher of a user, ``ts`` for expiry and ``watcher`` for the count
of users one watcher watches (the bounds of ``add_watcher``).

Version 2 adds exact queue byte accounting: ``devices.queue_bytes`` (envelope
bytes per device; a user's total is the sum of its rows), ``queue.charges`` (the
item's charge tags joined by U+001F, NULL for none), ``queue_charges`` (``tag`` -> bytes) and
``queue_shares`` (``user_id``, ``device_id``, ``tag``) -> bytes, kept by every
enqueue and deletion (rows at 0 are dropped by expiry); ``correspondents``
(``user_id``, ``other``): "user_id sent to other"; ``invites`` (``hash`` ->
``expires_at``): single-use registration tokens.
"""

from __future__ import annotations

import psycopg
from psycopg import sql

from ..errors import StorageError

USAGE_SLOTS = 16

MIGRATIONS: list[tuple[int, str, str]] = [
    (1, "queues, key directory, outbox, media", f"""
CREATE TABLE device_lists (
    user_id text COLLATE "C" PRIMARY KEY,
    version numeric(20, 0) NOT NULL,
    blob bytea NOT NULL
);
CREATE TABLE watchers (
    user_id text COLLATE "C" NOT NULL,
    watcher text COLLATE "C" NOT NULL,
    PRIMARY KEY (user_id, watcher)
);
CREATE TABLE devices (
    user_id text COLLATE "C" NOT NULL,
    device_id bigint NOT NULL,
    last_seq bigint NOT NULL DEFAULT 0,
    queue_len bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (user_id, device_id)
) WITH (fillfactor = 70);
CREATE TABLE queue (
    user_id text COLLATE "C" NOT NULL,
    device_id bigint NOT NULL,
    seq bigint NOT NULL,
    ts float8 NOT NULL,
    envelope bytea NOT NULL,
    PRIMARY KEY (user_id, device_id, seq)
);
ALTER TABLE queue ALTER COLUMN envelope SET STORAGE EXTERNAL;
CREATE INDEX queue_ts ON queue USING brin (ts);
CREATE TABLE dedupe (
    id bytea PRIMARY KEY,
    ts float8 NOT NULL
);
CREATE INDEX dedupe_ts ON dedupe USING brin (ts);
CREATE TABLE otk (
    user_id text COLLATE "C" NOT NULL,
    device_id bigint NOT NULL,
    key_id bytea NOT NULL,
    key bytea NOT NULL,
    PRIMARY KEY (user_id, device_id, key_id)
);
CREATE TABLE otk_claimed (
    user_id text COLLATE "C" NOT NULL,
    device_id bigint NOT NULL,
    key_id bytea NOT NULL,
    PRIMARY KEY (user_id, device_id, key_id)
);
CREATE TABLE fallback_keys (
    user_id text COLLATE "C" NOT NULL,
    device_id bigint NOT NULL,
    key_id bytea NOT NULL,
    key bytea NOT NULL,
    PRIMARY KEY (user_id, device_id)
);
CREATE SEQUENCE outbox_ids;
CREATE TABLE outbox (
    id bigint PRIMARY KEY,
    dest text COLLATE "C" NOT NULL,
    payload bytea NOT NULL,
    attempts integer NOT NULL DEFAULT 0
);
CREATE INDEX outbox_dest ON outbox (dest, id);
CREATE TABLE media (
    id bytea PRIMARY KEY,
    size bigint NOT NULL,
    received bigint NOT NULL,
    complete boolean NOT NULL,
    owner text COLLATE "C" NOT NULL,
    ts float8 NOT NULL
);
CREATE INDEX media_ts ON media (ts);
CREATE TABLE media_chunks (
    media_id bytea NOT NULL,
    off bigint NOT NULL,
    data bytea NOT NULL,
    PRIMARY KEY (media_id, off)
);
ALTER TABLE media_chunks ALTER COLUMN data SET STORAGE EXTERNAL;
CREATE TABLE wa_usage (
    slot integer PRIMARY KEY,
    bytes bigint NOT NULL DEFAULT 0
);
INSERT INTO wa_usage (slot) SELECT generate_series(0, {USAGE_SLOTS - 1});
CREATE TABLE wa_meta (
    key text PRIMARY KEY,
    value bigint NOT NULL
);
INSERT INTO wa_meta (key, value) VALUES ('media_used', 0);
CREATE TABLE wa_commits (
    token bytea PRIMARY KEY,
    at timestamptz NOT NULL DEFAULT now()
);
"""),
    (2, "queue byte accounting, correspondents, invites", """
ALTER TABLE devices ADD COLUMN queue_bytes bigint NOT NULL DEFAULT 0;
UPDATE devices AS t SET queue_bytes = s.n
    FROM (SELECT user_id, device_id, sum(octet_length(envelope)) AS n FROM queue
          GROUP BY user_id, device_id) AS s
    WHERE t.user_id = s.user_id AND t.device_id = s.device_id;
ALTER TABLE queue ADD COLUMN charges text;
CREATE TABLE queue_charges (
    tag text COLLATE "C" PRIMARY KEY,
    bytes bigint NOT NULL
);
CREATE TABLE queue_shares (
    user_id text COLLATE "C" NOT NULL,
    device_id bigint NOT NULL,
    tag text COLLATE "C" NOT NULL,
    bytes bigint NOT NULL,
    PRIMARY KEY (user_id, device_id, tag)
);
CREATE TABLE correspondents (
    user_id text COLLATE "C" NOT NULL,
    other text COLLATE "C" NOT NULL,
    PRIMARY KEY (user_id, other)
);
CREATE TABLE invites (
    hash bytea PRIMARY KEY,
    expires_at float8 NOT NULL
);
"""),
    (3, "handoff marks", """
CREATE TABLE wa_marks (
    name text COLLATE "C" PRIMARY KEY,
    value bytea NOT NULL
);
"""),
    (4, "dedupe ids linked to their users", """
ALTER TABLE dedupe ADD COLUMN imported boolean NOT NULL DEFAULT false;
CREATE TABLE dedupe_users (
    user_id text COLLATE "C" NOT NULL,
    id bytea NOT NULL REFERENCES dedupe (id) ON DELETE CASCADE,
    PRIMARY KEY (user_id, id)
);
CREATE INDEX dedupe_users_id ON dedupe_users (id);
"""),
    (5, "watcher refresh times", """
ALTER TABLE watchers ADD COLUMN ts float8 NOT NULL DEFAULT 0;
UPDATE watchers SET ts = extract(epoch FROM now());
CREATE INDEX watchers_age ON watchers (user_id, ts, watcher);
CREATE INDEX watchers_ts ON watchers (ts);
CREATE INDEX watchers_watcher ON watchers (watcher);
"""),
]
LATEST = MIGRATIONS[-1][0]


class SchemaError(StorageError):
    """The database schema cannot be used by this code (newer than it, or behind
    it while migrations were not allowed)."""


def set_search_path(conn: psycopg.Connection, schema: str) -> None:
    """Make ``schema`` the connection's only schema (``pg_catalog`` stays implicit)."""
    conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(schema)))


def migrate(conn: psycopg.Connection, schema: str, *, apply: bool = True) -> tuple[int, list[str]]:
    """Bring ``schema`` up to :data:`LATEST` (blocking; ``conn`` in autocommit mode).

    Args:
        conn: a connection in autocommit mode; its search path is set to ``schema``.
        schema: the PostgreSQL schema holding the node's tables (created if missing).
        apply: ``False`` only checks: raise :class:`SchemaError` if migrations are due.

    Returns:
        ``(version, applied)``: the schema version now, and ``"N name"`` for each
        migration applied by this call.

    Raises:
        SchemaError: the schema is newer than this code, or behind it with ``apply=False``.
        psycopg.Error: the server refused (e.g. no CREATE privilege).
    """
    lock = f"wa_relay.migrate.{schema}"
    conn.execute("SELECT pg_advisory_lock(hashtext(%s))", (lock,))
    try:
        if apply:
            conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema)))
        set_search_path(conn, schema)
        exists = conn.execute(
            "SELECT to_regclass(format('%%I.wa_schema', %s::text)) IS NOT NULL", (schema,)
        ).fetchone()
        current = 0
        if exists and exists[0]:
            row = conn.execute("SELECT coalesce(max(version), 0) FROM wa_schema").fetchone()
            current = row[0] if row else 0
        if current > LATEST:
            raise SchemaError(
                f"schema {schema!r} is at version {current}, newer than this wa-relay "
                f"knows ({LATEST}): upgrade wa-relay")
        due = [m for m in MIGRATIONS if m[0] > current]
        if due and not apply:
            raise SchemaError(
                f"schema {schema!r} is at version {current}, this wa-relay needs {LATEST}: "
                f"run 'wa-relay storage migrate --config node.toml' (or drop ?migrate=false)")
        applied = []
        for version, name, script in due:
            with conn.transaction():
                conn.execute("""CREATE TABLE IF NOT EXISTS wa_schema (
                    version integer PRIMARY KEY, name text NOT NULL,
                    applied_at timestamptz NOT NULL DEFAULT now())""")
                conn.execute(script)  # type: ignore[arg-type]  # a literal script of ours
                conn.execute("INSERT INTO wa_schema (version, name) VALUES (%s, %s)",
                             (version, name))
            applied.append(f"{version} {name}")
        return (due[-1][0] if due else current), applied
    finally:
        conn.execute("SELECT pg_advisory_unlock(hashtext(%s))", (lock,))
