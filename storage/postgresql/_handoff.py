"""The handoff methods of the PostgreSQL backend: list, export, import and delete one
user's state (:class:`storage.base.Storage`), and durable markers (table ``wa_marks``,
migration 2)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from .._keys import check_user_id
from .._memory_handoff import check_mark, check_records
from ..base import UserRecord
from ._ops import (
    CHARGE_CTES,
    DEDUPE_OVERHEAD,
    ITEM_OVERHEAD,
    KEY_OVERHEAD,
    LIST_OVERHEAD,
    WATCHER_OVERHEAD,
)
from ._writer import Op, Tx

_DELETE = """
WITH l AS (DELETE FROM device_lists WHERE user_id = %(u)s
           RETURNING octet_length(blob) + %(lo)s AS n),
w AS (DELETE FROM watchers WHERE user_id = %(u)s
      RETURNING octet_length(user_id) + octet_length(watcher) + %(wo)s AS n),
gone AS (DELETE FROM queue WHERE user_id = %(u)s
         RETURNING user_id, device_id, octet_length(envelope) AS len, charges),
q AS (SELECT len + %(io)s AS n FROM gone),
k AS (DELETE FROM otk WHERE user_id = %(u)s
      RETURNING octet_length(key_id) + octet_length(key) + %(ko)s AS n),
c AS (DELETE FROM otk_claimed WHERE user_id = %(u)s RETURNING octet_length(key_id) AS n),
f AS (DELETE FROM fallback_keys WHERE user_id = %(u)s
      RETURNING octet_length(key_id) + octet_length(key) + %(ko)s AS n),
z AS (UPDATE devices SET queue_len = 0, queue_bytes = 0 WHERE user_id = %(u)s)""" + CHARGE_CTES + """
SELECT (SELECT count(*) FROM q),
       (SELECT coalesce(sum(n), 0) FROM l) + (SELECT coalesce(sum(n), 0) FROM w)
       + (SELECT coalesce(sum(n), 0) FROM q) + (SELECT coalesce(sum(n), 0) FROM k)
       + (SELECT coalesce(sum(n), 0) FROM c) + (SELECT coalesce(sum(n), 0) FROM f)
"""


_UNLINK = """
WITH dd AS (DELETE FROM dedupe d WHERE d.id IN (SELECT id FROM dedupe_users WHERE user_id = %(u)s)
            AND NOT EXISTS (SELECT 1 FROM dedupe_users o WHERE o.id = d.id AND o.user_id <> %(u)s)
            RETURNING octet_length(d.id) + %(do)s AS n)
SELECT coalesce(sum(n), 0) FROM dd
"""
"""Delete the dedupe ids only ``u`` is linked to (their links go by the cascade)."""


def _delete(tx: Tx, user: str) -> int:
    [(count, freed)] = tx.fetch(_DELETE, {"u": user, "lo": LIST_OVERHEAD, "wo": WATCHER_OVERHEAD,
                                          "io": ITEM_OVERHEAD, "ko": KEY_OVERHEAD})
    [(unlinked,)] = tx.fetch(_UNLINK, {"u": user, "do": DEDUPE_OVERHEAD})
    tx.cur.execute("DELETE FROM dedupe_users WHERE user_id = %s", (user,))
    tx.free(int(freed) + int(unlinked))
    return int(count)


class DeleteUser(Op):
    """Delete a user's state, keep its counters; value: envelopes deleted."""

    __slots__ = ("user",)

    def __init__(self, user: str) -> None:
        super().__init__()
        self.user = user

    @classmethod
    def run(cls, tx: Tx, ops: Sequence[Op]) -> None:
        for op in ops:
            assert isinstance(op, DeleteUser)
            op.value = _delete(tx, op.user)


class ImportUser(Op):
    """Write exported records of one user (idempotent); ``reset`` deletes first."""

    __slots__ = ("user", "records", "reset")

    def __init__(self, user: str, records: list[UserRecord], reset: bool) -> None:
        size = sum(len(r.value) + len(r.key) + ITEM_OVERHEAD for r in records)
        super().__init__(size, size)
        self.user, self.records, self.reset = user, records, reset

    @classmethod
    def run(cls, tx: Tx, ops: Sequence[Op]) -> None:
        for op in ops:
            assert isinstance(op, ImportUser)
            if not tx.admit(op.adds):  # an upper bound: rows already there are counted
                tx.refuse_full(op)
                continue
            if op.reset:
                _delete(tx, op.user)
            for r in op.records:
                cls._one(tx, op.user, r)

    @staticmethod
    def _one(tx: Tx, u: str, r: UserRecord) -> None:
        d, key = r.device_id, r.key.encode()
        if r.kind == "list":
            tx.cur.execute(
                "INSERT INTO device_lists (user_id, version, blob) VALUES (%s, %s::numeric, %s) "
                "ON CONFLICT (user_id) DO UPDATE SET version = EXCLUDED.version, "
                "blob = EXCLUDED.blob WHERE device_lists.version <= EXCLUDED.version",
                (u, r.seq, r.value))
        elif r.kind == "watcher":
            tx.cur.execute("INSERT INTO watchers (user_id, watcher, ts) VALUES (%s, %s, %s) "
                           "ON CONFLICT (user_id, watcher) DO UPDATE SET ts = greatest("
                           "watchers.ts, EXCLUDED.ts)", (u, r.key, r.ts or time.time()))
        elif r.kind in ("seq", "item"):
            tx.cur.execute(
                "INSERT INTO devices (user_id, device_id, last_seq) VALUES (%s, %s, %s) "
                "ON CONFLICT (user_id, device_id) DO UPDATE "
                "SET last_seq = greatest(devices.last_seq, EXCLUDED.last_seq)", (u, d, r.seq))
            if r.kind == "item":
                tx.cur.execute(
                    "WITH ins AS (INSERT INTO queue (user_id, device_id, seq, ts, envelope) "
                    "VALUES (%s, %s, %s, %s, %s) ON CONFLICT (user_id, device_id, seq) "
                    "DO UPDATE SET envelope = EXCLUDED.envelope, ts = EXCLUDED.ts "
                    "RETURNING (xmax = 0) AS fresh) "
                    # an imported copy carries no charge tags (the old home's bookkeeping);
                    # a replaced copy (a resumed handoff) was counted already
                    "UPDATE devices SET queue_len = queue_len + 1, "
                    "queue_bytes = queue_bytes + %s "
                    "WHERE user_id = %s AND device_id = %s AND (SELECT fresh FROM ins)",
                    (u, d, r.seq, r.ts, r.value, len(r.value), u, d))
        elif r.kind == "fallback":
            tx.cur.execute(
                "INSERT INTO fallback_keys (user_id, device_id, key_id, key) VALUES (%s, %s, %s, %s) "
                "ON CONFLICT (user_id, device_id) DO UPDATE SET key_id = EXCLUDED.key_id, "
                "key = EXCLUDED.key", (u, d, key, r.value))
        elif r.kind == "otk":
            tx.cur.execute(
                "INSERT INTO otk (user_id, device_id, key_id, key) SELECT %s, %s, %s, %s "
                "WHERE NOT EXISTS (SELECT 1 FROM otk_claimed WHERE user_id = %s "
                "AND device_id = %s AND key_id = %s) ON CONFLICT DO NOTHING",
                (u, d, key, r.value, u, d, key))
        elif r.kind == "dedupe":
            tx.cur.execute("INSERT INTO dedupe (id, ts, imported) VALUES (%s, %s, true) "
                           "ON CONFLICT DO NOTHING", (r.value, r.ts))
            tx.cur.execute("INSERT INTO dedupe_users (user_id, id) VALUES (%s, %s) "
                           "ON CONFLICT DO NOTHING", (u, r.value))
        else:  # claimed
            tx.cur.execute("DELETE FROM otk WHERE user_id = %s AND device_id = %s AND key_id = %s",
                           (u, d, key))
            tx.cur.execute("INSERT INTO otk_claimed (user_id, device_id, key_id) "
                           "VALUES (%s, %s, %s) ON CONFLICT DO NOTHING", (u, d, key))


class SetMark(Op):
    """Set or delete one marker."""

    __slots__ = ("name", "mark")

    def __init__(self, name: str, mark: bytes | None) -> None:
        super().__init__(len(mark or b""))
        self.name, self.mark = name, mark

    @classmethod
    def run(cls, tx: Tx, ops: Sequence[Op]) -> None:
        for op in ops:
            assert isinstance(op, SetMark)
            if op.mark is None:
                tx.cur.execute("DELETE FROM wa_marks WHERE name = %s", (op.name,))
            else:
                tx.cur.execute("INSERT INTO wa_marks (name, value) VALUES (%s, %s) "
                               "ON CONFLICT (name) DO UPDATE SET value = EXCLUDED.value",
                               (op.name, op.mark))


_EXPORT = """
SELECT kind, device_id, k, s, ts, v FROM (
SELECT 0 AS part, 'list' AS kind, 0::bigint AS device_id, ''::text AS k, version AS s,
    0.0::float8 AS ts, blob AS v FROM device_lists WHERE user_id = %(u)s
UNION ALL SELECT 1, 'watcher', 0, watcher, 0, ts, ''::bytea FROM watchers WHERE user_id = %(u)s
UNION ALL SELECT 2, 'seq', device_id, '', last_seq, 0.0, ''::bytea FROM devices
    WHERE user_id = %(u)s
UNION ALL SELECT 3, 'fallback', device_id, convert_from(key_id, 'UTF8'), 0, 0.0, key
    FROM fallback_keys WHERE user_id = %(u)s
UNION ALL SELECT 4, 'otk', device_id, convert_from(key_id, 'UTF8'), 0, 0.0, key FROM otk
    WHERE user_id = %(u)s
UNION ALL SELECT 5, 'claimed', device_id, convert_from(key_id, 'UTF8'), 0, 0.0, ''::bytea
    FROM otk_claimed WHERE user_id = %(u)s
UNION ALL SELECT 6, 'item', device_id, '', seq, ts, envelope FROM queue WHERE user_id = %(u)s
UNION ALL SELECT 7, 'dedupe', 0, '', 0, d.ts, d.id FROM dedupe_users l
    JOIN dedupe d ON d.id = l.id WHERE l.user_id = %(u)s
) x
ORDER BY CASE WHEN part < 2 THEN part WHEN part = 7 THEN 3 ELSE 2 END,
         CASE WHEN part < 2 OR part = 7 THEN -1 ELSE device_id END,
         part, k COLLATE "C", s, CASE WHEN part = 7 THEN v END
OFFSET %(start)s LIMIT %(limit)s
"""
"""One page of a user's export, ordered as :meth:`storage.base.Storage.export_user`
says (the server sorts and skips: a page costs no transfer of the pages before it)."""


class PgHandoffMixin:
    """Handoff methods; relies on the host's ``_fetch``, ``writer`` and ``_check_open``."""

    async def list_users(self, after: str = "", limit: int = 256) -> list[str]:
        """See :meth:`storage.base.Storage.list_users`."""
        rows = await self._fetch(  # type: ignore[attr-defined]
            "SELECT u FROM (SELECT user_id AS u FROM device_lists WHERE user_id > %(a)s "
            "UNION SELECT user_id FROM devices WHERE user_id > %(a)s AND queue_len > 0 "
            "UNION SELECT user_id FROM otk WHERE user_id > %(a)s) x ORDER BY u LIMIT %(n)s",
            {"a": after, "n": max(limit, 0)})
        return [r[0] for r in rows]

    async def export_user(self, user_id: str, *, start: int = 0, limit: int = 256) -> list[UserRecord]:
        """See :meth:`storage.base.Storage.export_user` (one query per page, sorted and
        sliced by the server)."""
        check_user_id(user_id)
        rows = await self._fetch(_EXPORT, {"u": user_id, "start": max(start, 0),  # type: ignore[attr-defined]
                                           "limit": max(limit, 0)})
        return [UserRecord(kind, device_id=int(d), key=k, seq=int(s), ts=float(ts), value=bytes(v))
                for kind, d, k, s, ts, v in rows]

    async def import_user(
        self, user_id: str, records: list[UserRecord], *, reset: bool = False
    ) -> None:
        """See :meth:`storage.base.Storage.import_user`."""
        check_user_id(user_id)
        check_records(records)
        self._check_open()  # type: ignore[attr-defined]
        await self.writer.submit(ImportUser(user_id, list(records), reset))  # type: ignore[attr-defined]

    async def delete_user(self, user_id: str) -> int:
        """See :meth:`storage.base.Storage.delete_user`."""
        check_user_id(user_id)
        self._check_open()  # type: ignore[attr-defined]
        return await self.writer.submit(DeleteUser(user_id))  # type: ignore[attr-defined]

    async def media_owned(self, owner: str, after: bytes = b"", limit: int = 256) -> list[bytes]:
        """See :meth:`storage.base.Storage.media_owned`."""
        rows = await self._fetch(  # type: ignore[attr-defined]
            "SELECT id FROM media WHERE owner = %s AND complete AND id > %s ORDER BY id LIMIT %s",
            (owner, after, max(limit, 0)))
        return [bytes(r[0]) for r in rows]

    async def media_delete(self, media_id: bytes) -> bool:
        """See :meth:`storage.base.Storage.media_delete`."""
        def delete(conn: Any, attempt: int) -> bool:
            with conn.transaction():
                row = conn.execute("""
                    WITH gone AS (DELETE FROM media WHERE id = %(id)s RETURNING id, received),
                    ch AS (DELETE FROM media_chunks c USING gone WHERE c.media_id = gone.id),
                    m AS (UPDATE wa_meta SET value = value - (SELECT coalesce(sum(received), 0)
                                                              FROM gone)
                          WHERE key = 'media_used')
                    SELECT count(*) FROM gone""", {"id": media_id}).fetchone()
            return bool(row and row[0])
        self._check_open()  # type: ignore[attr-defined]
        return await self._with_conn(delete)  # type: ignore[attr-defined]

    async def get_mark(self, name: str) -> bytes | None:
        """See :meth:`storage.base.Storage.get_mark`."""
        check_mark(name)
        rows = await self._fetch("SELECT value FROM wa_marks WHERE name = %s", (name,))  # type: ignore[attr-defined]
        return bytes(rows[0][0]) if rows else None

    async def set_mark(self, name: str, value: bytes | None) -> None:
        """See :meth:`storage.base.Storage.set_mark`."""
        check_mark(name, value)
        self._check_open()  # type: ignore[attr-defined]
        await self.writer.submit(SetMark(name, value))  # type: ignore[attr-defined]

    async def marks(self, prefix: str) -> dict[str, bytes]:
        """See :meth:`storage.base.Storage.marks`."""
        rows = await self._fetch(  # type: ignore[attr-defined]
            "SELECT name, value FROM wa_marks WHERE starts_with(name, %s)", (prefix,))
        return {n: bytes(v) for n, v in rows}
