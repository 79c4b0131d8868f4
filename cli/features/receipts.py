"""Delivery and read receipts: ``receipt`` payloads (:mod:`cli.features.kinds`), end-to-end encrypted.

A receipt goes pairwise (Olm) to the author of the messages it names, and to this
account's other devices (like every 1:1 send), also for group messages. It names at
most :data:`cli.features.kinds.MAX_TARGETS` messages; more take several receipts.

* ``delivered``: sent by :class:`cli.features.receiving.Receiver` (``receipts=True`` in
  :class:`cli.session.prefs.Prefs`) for the text and file messages of each received batch,
  once the batch is saved and acknowledged. Best effort: a receipt that cannot be sent
  (the author's home is unreachable, the process stops) is not retried.
* ``read``: :func:`mark_read`, for every received message of a conversation not yet
  marked read (``wa-cli read``); this account's other devices mark them read too.

Held requests and blocked users get no receipt (they never become messages).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from typing import TYPE_CHECKING

from cli.errors import ClientError
from cli.features.effects import now_ms
from cli.features.kinds import MAX_TARGETS, KindPayload
from cli.features.sending import send_payload

if TYPE_CHECKING:
    from cli.session.session import Session

__all__ = ["mark_read", "send_receipts", "unread"]

log = logging.getLogger(__name__)


async def send_receipts(session: Session, status: str, by_author: dict[str, list[bytes]]) -> int:
    """Send ``status`` receipts for ``author user_id -> [msg_id]``; returns how many
    receipt messages left.

    Raises:
        SendFailed, RelayError, DeviceListRejected, ConnectionLost: a send failed
            (those before it were sent).
    """
    sent = 0
    for author, ids in by_author.items():
        if author == session.state.user_id:
            continue
        for i in range(0, len(ids), MAX_TARGETS):
            msg_id = os.urandom(16)
            p = KindPayload("receipt", msg_id, now_ms(), session.state.name, author,
                            {"status": status, "targets": ids[i:i + MAX_TARGETS]})
            await send_payload(session, author, msg_id, p.encode())
            sent += 1
    return sent


async def send_delivered(session: Session, by_author: dict[str, list[bytes]]) -> None:
    """:func:`send_receipts` of ``delivered``, failures logged (best effort)."""
    try:
        await send_receipts(session, "delivered", by_author)
    except ClientError as exc:
        log.warning("delivery receipts not sent: %s", exc)


def unread(entries: Iterable[dict], conversation: str | None) -> list[dict]:
    """The received, not held, not deleted entries of ``conversation`` (user_id or group
    id in hex; ``None``: all) not marked read yet."""
    return [e for e in entries
            if e.get("direction") == "in" and not e.get("read") and not e.get("held")
            and not e.get("deleted")
            and (conversation is None
                 or (e.get("group_id") or e.get("peer")) == conversation)]


async def mark_read(session: Session, conversation: str | None) -> list[dict]:
    """Mark the unread messages of ``conversation`` read (saved first) and send ``read``
    receipts to their authors (when receipts are on); returns the entries.

    Raises:
        SendFailed, RelayError, DeviceListRejected, ConnectionLost: a receipt could not
            be sent (the entries stay marked read).
    """
    state = session.state
    entries = unread(state.history, conversation)
    by_author: dict[str, list[bytes]] = {}
    for entry in entries:
        entry["read"] = True
        state.history_changed(entry)
        by_author.setdefault(entry["from"], []).append(bytes.fromhex(entry["id"]))
    await state.asave()
    if state.prefs.receipts:
        await send_receipts(session, "read", by_author)
    return entries
