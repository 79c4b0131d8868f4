"""The local outbox: messages that could not reach a relay, kept in the device state
(``state.bin``, sealed under the storage key) and sent, once, when a connection returns.

An entry is the encoded payload (:mod:`cli.features.payload`) and where it goes; it is
encrypted for the recipient's devices only when it is sent, so it never holds a
ciphertext made for a device list that changed meanwhile. A sent entry keeps its
``msg_id``, and recipients drop a second copy of a ``(sender, msg_id)``, so an entry
sent again after a crash (between the relay's answer and the save that removes it)
is still shown once.

Entry (msgpack map in the state): ``{id: bytes(16), to: USER_ID | "", group_id:
bytes | None, payload: bytes, ts: ms}``.
"""

from __future__ import annotations

import logging

from cli.errors import ConnectionLost, RelayError, SendFailed, SendUnknown
from cli.events import Bounce
from cli.features import group_messaging, sending
from cli.session.group_state import GroupError
from cli.session.session import Session
from cli.session.state import State
from relay.protocol import ErrorCode

__all__ = ["NOT_SENT", "PENDING", "entries", "flush", "keep"]

log = logging.getLogger(__name__)

PENDING = "pending"
"""The status of a message kept in the local outbox (besides the relay's ``stored``
and ``queued``)."""

RETRYABLE = frozenset({ErrorCode.UNAVAILABLE, ErrorCode.QUEUE_FULL, ErrorCode.RATE_LIMITED,
                       ErrorCode.STORAGE_FULL, ErrorCode.STORAGE_UNAVAILABLE,
                       ErrorCode.INTERNAL})


def keep(state: State, msg_id: bytes, plaintext: bytes, *, to: str = "",
         group_id: bytes | None = None, ts: int | None = None) -> None:
    """Add a message to the outbox (in memory; the caller saves the state).

    Args:
        msg_id: its 16-byte id (already in the local history).
        plaintext: the encoded payload.
        to: the recipient's user_id (1:1), or ``group_id`` for a group message.
    """
    state.outbox.append({"id": msg_id, "to": to, "group_id": group_id, "payload": plaintext,
                         "ts": sending.now_ms() if ts is None else ts})


NOT_SENT = "not_sent"
"""The bounce code of an outbox entry the client itself could not send."""


def _tell(state: State, entry: dict, code: str, message: str) -> None:
    """Keep a bounce for a dropped entry in the inbox (saved with the entry's removal)."""
    where = entry["to"] or (f"group {entry['group_id'].hex()}" if entry["group_id"] else "")
    state.inbox.keep(Bounce(entry["id"], where, str(code),
                            f"kept while offline (pending), then not sent: {message}"))


def entries(state: State) -> list[dict]:
    """What waits, oldest first: ``{"id": hex, "to": user_id or "", "group_id": hex or
    None, "ts": ms}`` per message."""
    return [{"id": e["id"].hex(), "to": e["to"],
             "group_id": e["group_id"].hex() if e["group_id"] else None, "ts": e["ts"]}
            for e in state.outbox]


async def flush(session: Session) -> list[tuple[bytes, str]]:
    """Send what waits in the outbox, oldest first, each under its own ``msg_id``; an
    entry leaves the outbox (state saved) once the relay answered for it.

    A connection problem (lost, no answer) stops the flush and keeps the rest; a
    relay refusal that cannot change by waiting (``unknown_user``, not a group member,
    ...) drops that entry with a warning and keeps a :class:`~cli.events.Bounce` in
    the inbox, so the next ``recv`` (or the daemon's subscribers) tells the user that
    the message they were told is ``pending`` was not sent (code ``not_sent`` when
    the client itself gave up: no keys, not a member).

    Returns:
        ``(msg_id, status)`` of each message sent.

    Raises:
        OSError: the state could not be saved.
    """
    state = session.state
    sent: list[tuple[bytes, str]] = []
    while state.outbox:
        entry = state.outbox[0]
        try:
            if entry["group_id"]:
                status = await group_messaging.send_group_payload(
                    session, entry["group_id"], entry["id"], entry["payload"])
            else:
                status = await sending.send_payload(session, entry["to"], entry["id"],
                                                    entry["payload"])
        except (ConnectionLost, SendUnknown) as exc:
            log.info("outbox: %s; %d message(s) wait for the next connection", exc,
                     len(state.outbox))
            break
        except RelayError as exc:
            if exc.code in RETRYABLE:
                log.info("outbox: %s; kept for the next connection", exc)
                break
            log.warning("outbox: message %s was refused (%s); dropped", entry["id"].hex(), exc)
            _tell(state, entry, exc.code, str(exc))
            status = None
        except (SendFailed, GroupError) as exc:
            log.warning("outbox: message %s cannot be sent (%s); dropped", entry["id"].hex(), exc)
            _tell(state, entry, NOT_SENT, str(exc))
            status = None
        if state.outbox and state.outbox[0] is entry:
            state.outbox.pop(0)
        await state.asave()
        if status is not None:
            sent.append((entry["id"], status))
    return sent
