"""The media methods of :class:`~storage.postgresql.PostgresStorage` (a mixin).

Where the bytes live: **in the database**, one ``bytea`` row per appended chunk
(``media_chunks``, at most 256 KiB each, stored uncompressed out of line), next
to the blob's record (``media``). Not in a blob directory, because a home node
on PostgreSQL is meant to be served by several relay processes on several
machines and to fail over to a replica: chunks in the database are shared by
every process, replicated, backed up and restored with everything else
(``pg_dump``, base backups, WAL archiving), with no second store to keep
consistent. The price is WAL volume (every byte is written twice) and database
size; ``docs/storage.md`` says when to prefer an object store.

One append is one transaction in a worker thread, outside the group commit (a
hash check over a large blob must not hold up everyone's messages):

1. create the record (``INSERT ... ON CONFLICT DO NOTHING``) or lock it
   (``SELECT ... FOR UPDATE``), so appends to one blob are serialized across
   processes; validate (offset, size, owner; the quota against ``wa_meta``'s
   ``media_used`` row, locked);
2. insert the chunk row;
3. if it completes the blob, stream the chunks back through SHA-256 (a server-side
   cursor, four chunks at a time): a mismatch deletes the blob and raises
   ``MediaCorrupt``;
4. update the record and ``media_used``; commit.

A refusal rolls the whole transaction back, so nothing of it is stored. A
connection lost during an append is retried on a fresh connection; if the lost
attempt had committed, the retry finds the chunk stored and answers with it.
Never a whole blob in memory; never a hash or a query on the event loop.
"""

from __future__ import annotations

import hashlib
import time
from typing import Any

import psycopg

from .._keys import check_bytes, check_user_id
from .._media_args import (
    check_continues,
    check_media_append,
    check_media_id,
    check_media_read,
    over_quota,
)
from ..base import MEDIA_CHUNK_MAX, MediaInfo
from ..errors import MediaCorrupt, StorageFull

HASH_ROWS = 4


def _info(media_id: bytes, row: tuple[Any, ...]) -> MediaInfo:
    size, received, complete, owner, ts = row
    return MediaInfo(media_id, int(size), int(received), bool(complete), owner, float(ts))


class PgMediaMixin:
    """Media blobs as chunk rows; see :class:`storage.base.Storage` ("media").

    Relies on the host's ``_with_conn(fn)`` (run ``fn(conn, attempt)`` in a worker
    thread with a pooled connection, retrying lost connections) and ``_check_open()``.
    """

    async def media_append(
        self, media_id: bytes, size: int, offset: int, chunk: bytes, *, owner: str,
        max_total: int | None = None, now: float | None = None,
    ) -> MediaInfo:
        """See :meth:`storage.base.Storage.media_append`."""
        media_id = check_media_id(media_id)
        chunk = check_bytes("chunk", chunk)
        check_user_id(owner)
        check_media_append(size, offset, len(chunk))
        ts = time.time() if now is None else float(now)

        def append(conn: psycopg.Connection, attempt: int) -> tuple[MediaInfo, bool]:
            with conn.transaction(), conn.cursor(binary=True) as cur:
                return _append(conn, cur, media_id, size, offset, chunk, owner, max_total, ts,
                               attempt > 0)

        info, corrupt = await self._with_conn(append)  # type: ignore[attr-defined]
        if corrupt:
            raise MediaCorrupt("the blob's SHA-256 differs from its media id; it was deleted")
        return info

    async def media_status(self, media_id: bytes) -> MediaInfo | None:
        """See :meth:`storage.base.Storage.media_status`."""
        media_id = check_media_id(media_id)

        def status(conn: psycopg.Connection, attempt: int) -> MediaInfo | None:
            row = conn.cursor(binary=True).execute(
                "SELECT size, received, complete, owner, ts FROM media WHERE id = %s",
                (media_id,)).fetchone()
            return None if row is None else _info(media_id, row)
        return await self._with_conn(status)  # type: ignore[attr-defined]

    async def media_read(self, media_id: bytes, offset: int, length: int) -> bytes | None:
        """See :meth:`storage.base.Storage.media_read`."""
        media_id = check_media_id(media_id)

        def read(conn: psycopg.Connection, attempt: int) -> bytes | None:
            cur = conn.cursor(binary=True)
            row = cur.execute("SELECT size FROM media WHERE id = %s AND complete",
                              (media_id,)).fetchone()
            if row is None:
                return None
            size = int(row[0])
            check_media_read(size, offset, length)
            end = min(offset + length, size)
            if end <= offset:
                return b""
            # A chunk holds at most MEDIA_CHUNK_MAX bytes, so only chunks starting after
            # offset - MEDIA_CHUNK_MAX can reach offset: the primary key finds them.
            parts = cur.execute("""
                SELECT substring(data FROM (greatest(%(o)s - off, 0) + 1)::int
                                 FOR (least(off + octet_length(data), %(e)s)
                                      - greatest(off, %(o)s))::int)
                FROM media_chunks
                WHERE media_id = %(id)s AND off < %(e)s AND off > %(o)s - %(max)s
                      AND off + octet_length(data) > %(o)s
                ORDER BY off""",
                {"id": media_id, "o": offset, "e": end, "max": MEDIA_CHUNK_MAX}).fetchall()
            return b"".join(bytes(p[0]) for p in parts)
        return await self._with_conn(read)  # type: ignore[attr-defined]

    async def media_usage(self) -> int:
        """See :meth:`storage.base.Storage.media_usage`."""
        def usage(conn: psycopg.Connection, attempt: int) -> int:
            row = conn.execute("SELECT value FROM wa_meta WHERE key = 'media_used'").fetchone()
            return int(row[0]) if row else 0
        return await self._with_conn(usage)  # type: ignore[attr-defined]

    async def media_owner_usage(self, owner: str) -> int:
        """See :meth:`storage.base.Storage.media_owner_usage`."""
        rows = await self._fetch(  # type: ignore[attr-defined]
            "SELECT coalesce(sum(received), 0) FROM media WHERE owner = %s", (owner,))
        return int(rows[0][0])

    async def media_expire(
        self, older_than: float, *, incomplete_older_than: float | None = None
    ) -> int:
        """See :meth:`storage.base.Storage.media_expire`."""
        stalled = older_than if incomplete_older_than is None else float(incomplete_older_than)

        def expire(conn: psycopg.Connection, attempt: int) -> int:
            with conn.transaction():
                row = conn.execute("""
                    WITH gone AS (DELETE FROM media
                                  WHERE ts < %(old)s OR (NOT complete AND ts < %(stalled)s)
                                  RETURNING id, received),
                    ch AS (DELETE FROM media_chunks c USING gone WHERE c.media_id = gone.id),
                    m AS (UPDATE wa_meta SET value = value - (SELECT coalesce(sum(received), 0)
                                                              FROM gone)
                          WHERE key = 'media_used')
                    SELECT count(*) FROM gone""",
                    {"old": float(older_than), "stalled": stalled}).fetchone()
            return int(row[0]) if row else 0
        return await self._with_conn(expire)  # type: ignore[attr-defined]


def _append(
    conn: psycopg.Connection, cur: psycopg.Cursor, media_id: bytes, size: int, offset: int,
    chunk: bytes, owner: str, max_total: int | None, ts: float, retrying: bool,
) -> tuple[MediaInfo, bool]:
    """Steps 1-4 of the module docstring inside the caller's transaction; returns the
    new state and whether the blob was corrupt (and deleted). Raises MediaConflict or
    StorageFull (the caller's transaction is then rolled back)."""
    created = cur.execute(
        "INSERT INTO media (id, size, received, complete, owner, ts) "
        "VALUES (%s, %s, 0, false, %s, %s) ON CONFLICT DO NOTHING RETURNING 1",
        (media_id, size, owner, ts)).fetchone()
    old: MediaInfo | None = None
    if created is None:
        row = cur.execute("SELECT size, received, complete, owner, ts FROM media "
                          "WHERE id = %s FOR UPDATE", (media_id,)).fetchone()
        assert row is not None  # the conflicting row exists and is ours to lock
        old = _info(media_id, row)
        if old.complete and old.size == size:
            return old, False
        if (retrying and old.size == size and old.owner == owner
                and old.received == offset + len(chunk)):
            return old, False  # the lost attempt had committed this very chunk
    check_continues(old, size, offset, owner)
    used_row = cur.execute("SELECT value FROM wa_meta WHERE key = 'media_used' FOR UPDATE"
                           ).fetchone()
    used = int(used_row[0]) if used_row else 0
    if over_quota(used, old, size, len(chunk), max_total):
        raise StorageFull(f"media quota of {max_total} bytes exceeded")
    if chunk:
        cur.execute("INSERT INTO media_chunks (media_id, off, data) VALUES (%s, %s, %s)",
                    (media_id, offset, chunk))
    received = offset + len(chunk)
    complete = received == size
    if complete:
        digest = hashlib.sha256()
        with conn.cursor(name="wa_media_hash", binary=True) as hc:
            hc.itersize = HASH_ROWS
            hc.execute("SELECT data FROM media_chunks WHERE media_id = %s ORDER BY off",
                       (media_id,))
            for (data,) in hc:
                digest.update(data)
        if digest.digest() != media_id:
            cur.execute("DELETE FROM media_chunks WHERE media_id = %s", (media_id,))
            cur.execute("DELETE FROM media WHERE id = %s", (media_id,))
            cur.execute("UPDATE wa_meta SET value = value - %s WHERE key = 'media_used'",
                        (offset,))
            return MediaInfo(media_id, size, 0, False, owner, ts), True
    cur.execute("UPDATE media SET received = %s, complete = %s, ts = %s WHERE id = %s",
                (received, complete, ts, media_id))
    cur.execute("UPDATE wa_meta SET value = value + %s WHERE key = 'media_used'", (len(chunk),))
    return MediaInfo(media_id, size, received, complete, owner, ts), False

