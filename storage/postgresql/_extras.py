"""Byte counts, correspondents and invites of :class:`~storage.postgresql.PostgresStorage`
(a mixin; the queue ops of :mod:`._ops` keep the counts exact).

Relies on the host's ``writer``, ``_fetch``, ``_check_open()`` and ``_dev()``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from .. import _keys as K
from ._ops import WATCHER_OVERHEAD
from ._writer import Op, Tx

INVITE_OVERHEAD = 32


class AddCorrespondents(Op):
    """Record that ``user`` sent to each of ``others`` (idempotent)."""

    __slots__ = ("user", "others")

    def __init__(self, user: str, others: list[str]) -> None:
        n = sum(len(user.encode()) + len(o.encode()) for o in others)
        super().__init__(n, n + WATCHER_OVERHEAD * len(others))
        self.user, self.others = user, sorted(set(others))

    @classmethod
    def run(cls, tx: Tx, ops: Sequence[Op]) -> None:
        for op in ops:
            assert isinstance(op, AddCorrespondents)
            if not tx.admit(op.adds):
                tx.refuse_full(op)
                continue
            tx.cur.execute(
                "INSERT INTO correspondents (user_id, other) SELECT %s, o FROM "
                "unnest(%b::text[]) AS v(o) ON CONFLICT DO NOTHING", (op.user, op.others))


class InviteAdd(Op):
    """Store an invite hash with its expiry."""

    __slots__ = ("token_hash", "expires_at")

    def __init__(self, token_hash: bytes, expires_at: float) -> None:
        super().__init__(len(token_hash), len(token_hash) + INVITE_OVERHEAD)
        self.token_hash, self.expires_at = token_hash, expires_at

    @classmethod
    def run(cls, tx: Tx, ops: Sequence[Op]) -> None:
        for op in ops:
            assert isinstance(op, InviteAdd)
            if not tx.admit(op.adds):
                tx.refuse_full(op)
                continue
            tx.cur.execute("INSERT INTO invites (hash, expires_at) VALUES (%s, %s) ON CONFLICT "
                           "(hash) DO UPDATE SET expires_at = EXCLUDED.expires_at",
                           (op.token_hash, op.expires_at))


class InviteUse(Op):
    """Consume an invite; value: whether it existed and was unexpired."""

    __slots__ = ("token_hash", "now")

    def __init__(self, token_hash: bytes, now: float) -> None:
        super().__init__()
        self.token_hash, self.now = token_hash, now

    @classmethod
    def run(cls, tx: Tx, ops: Sequence[Op]) -> None:
        for op in ops:
            assert isinstance(op, InviteUse)
            rows = tx.fetch("DELETE FROM invites WHERE hash = %s RETURNING expires_at",
                            (op.token_hash,))
            if rows:
                tx.free(len(op.token_hash) + INVITE_OVERHEAD)
            op.value = bool(rows) and op.now < rows[0][0]


class PgExtrasMixin:
    """See :class:`storage.base.Storage` (queue bytes, charges, correspondents, invites)."""

    async def queue_bytes(self, user_id: str, device_id: int | None = None) -> int:
        """See :meth:`storage.base.Storage.queue_bytes`."""
        if device_id is None:
            K.check_user_id(user_id)
            rows = await self._fetch(  # type: ignore[attr-defined]
                "SELECT coalesce(sum(queue_bytes), 0) FROM devices WHERE user_id = %s",
                (user_id,))
        else:
            rows = await self._fetch(  # type: ignore[attr-defined]
                "SELECT queue_bytes FROM devices WHERE user_id = %s AND device_id = %s",
                self._dev(user_id, device_id))  # type: ignore[attr-defined]
        return int(rows[0][0]) if rows else 0

    async def charged_bytes(
        self, tag: str, user_id: str | None = None, device_id: int | None = None
    ) -> int:
        """See :meth:`storage.base.Storage.charged_bytes`."""
        if user_id is None or device_id is None:
            rows = await self._fetch(  # type: ignore[attr-defined]
                "SELECT bytes FROM queue_charges WHERE tag = %s", (tag,))
        else:
            rows = await self._fetch(  # type: ignore[attr-defined]
                "SELECT bytes FROM queue_shares WHERE user_id = %s AND device_id = %s "
                "AND tag = %s", (*self._dev(user_id, device_id), tag))  # type: ignore[attr-defined]
        return max(0, int(rows[0][0])) if rows else 0

    async def add_correspondents(self, user_id: str, others: list[str]) -> None:
        """See :meth:`storage.base.Storage.add_correspondents`. Stored pairs cost one read."""
        K.check_user_id(user_id)
        for other in others:
            K.check_user_id(other)
        rows = await self._fetch(  # type: ignore[attr-defined]
            "SELECT other FROM correspondents WHERE user_id = %s AND other = ANY(%s)",
            (user_id, list(others)))
        new = sorted(set(others) - {r[0] for r in rows})
        if new:
            self._check_open()  # type: ignore[attr-defined]
            await self.writer.submit(AddCorrespondents(user_id, new))  # type: ignore[attr-defined]

    async def is_correspondent(self, user_id: str, other: str) -> bool:
        """See :meth:`storage.base.Storage.is_correspondent`."""
        return bool(await self._fetch(  # type: ignore[attr-defined]
            "SELECT 1 FROM correspondents WHERE user_id = %s AND other = %s", (user_id, other)))

    async def invite_add(self, token_hash: bytes, expires_at: float) -> None:
        """See :meth:`storage.base.Storage.invite_add`."""
        raw = K.check_bytes("token_hash", token_hash)
        self._check_open()  # type: ignore[attr-defined]
        await self.writer.submit(InviteAdd(raw, float(expires_at)))  # type: ignore[attr-defined]

    async def invite_use(self, token_hash: bytes, now: float | None = None) -> bool:
        """See :meth:`storage.base.Storage.invite_use`."""
        raw = K.check_bytes("token_hash", token_hash)
        self._check_open()  # type: ignore[attr-defined]
        when = time.time() if now is None else float(now)
        return await self.writer.submit(InviteUse(raw, when))  # type: ignore[attr-defined]
