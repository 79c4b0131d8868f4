"""Sending the messaging basics: replies, reactions, edits, deletes, timers, typing.

A *conversation* is a user_id (1:1) or a group id in hex (32 hex digits). Every
action is a payload (:mod:`cli.features.payload`, :mod:`cli.features.kinds`) sent like a message: to
the peer's devices and this account's other devices (Olm), or once with the group's
sender key (Megolm); this device applies it to its own history at once
(:func:`cli.features.effects.on_payload`, as the other devices do on receipt). A text carries
the conversation's disappearing timer (:attr:`cli.session.prefs.Prefs.timers`).

Typing goes with the relay's ``ephemeral`` flag (only connected devices get it,
nothing is stored) and exists for 1:1 conversations only.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from cli.errors import ClientError, RelayError, SendFailed
from cli.events import SendResult
from cli.features import effects, group_messaging, outbound, payload
from cli.features.kinds import MAX_EXPIRES, KindPayload
from cli.features.sending import send_payload
from relay.protocol import ErrorCode
from relay.protocol.frames import Send

if TYPE_CHECKING:
    from cli.session.groups import GroupRecord
    from cli.session.session import Session
    from cli.session.state import State

__all__ = [
    "ActionError", "delete", "edit", "find_message", "group_of", "react", "send_kind",
    "send_text", "set_timer", "typing",
]

HEX_GROUP_ID = 32


class ActionError(ClientError):
    """The target message is unknown here, or the action is not allowed on it
    (editing or deleting another user's message, acting on a deleted one)."""


def group_of(state: State, conversation: str) -> GroupRecord | None:
    """The group record of a conversation that is a group id in hex, else ``None``."""
    if len(conversation) != HEX_GROUP_ID:
        return None
    try:
        return state.groups.groups.get(bytes.fromhex(conversation))
    except ValueError:
        return None


def find_message(state: State, msg_id: str) -> dict:
    """The history entry of ``msg_id``: 32 hex digits, or a prefix of at least 8 that
    names one message.

    Raises:
        ActionError: unknown, ambiguous, or deleted.
    """
    msg_id = msg_id.lower()
    if len(msg_id) < 8:
        raise ActionError("a message id has at least 8 hex digits")
    hits = {e["id"]: e for e in state.history
            if e.get("id", "").startswith(msg_id) and not e.get("held")}
    if not hits:
        raise ActionError(f"no message {msg_id} on this device (see 'wa-cli history')")
    if len(hits) > 1:
        raise ActionError(f"several messages start with {msg_id}; give more digits")
    (entry,) = hits.values()
    if entry.get("deleted"):
        raise ActionError(f"message {entry['id']} was deleted")
    return entry


async def _send(client: Session, conversation: str, p: payload.Payload) -> str:
    record = group_of(client.state, conversation)
    if record is not None:
        return await group_messaging.send_group_payload(client, record.state.group_id,
                                                        p.msg_id, p.encode())
    return await send_payload(client, conversation, p.msg_id, p.encode())


def _apply_own(client: Session, conversation: str, p: payload.Payload) -> None:
    state = client.state
    record = group_of(state, conversation)
    effects.on_payload(state, state.user_id, state.device_id, p, peer=conversation,
                       group=(record.state.name, record.state.hex_id) if record else None)


async def send_text(client: Session, conversation: str, text: str, *,
                    reply_to: bytes | None = None) -> SendResult:
    """Send ``text`` to a conversation, optionally as a reply; it carries the
    conversation's disappearing timer. Recorded in history before it leaves; the
    peer of a 1:1 text counts as accepted (:mod:`cli.session.prefs`) from now on.

    Raises:
        ValueError: text too long. GroupSendError: not a member.
        SendFailed, RelayError, DeviceListRejected, ConnectionLost: as any send.
    """
    if len(text) > payload.MAX_TEXT:
        raise ValueError(f"text is longer than {payload.MAX_TEXT} characters")
    state = client.state
    expires = state.prefs.timers.get(conversation, 0)
    p = payload.TextPayload(os.urandom(16), text, effects.now_ms(), state.name, conversation,
                            reply_to, expires)
    if group_of(state, conversation) is None:
        state.prefs.accepted.add(conversation)
    _apply_own(client, conversation, p)
    status = await _send(client, conversation, p)
    return SendResult(p.msg_id, status, conversation)


async def send_kind(client: Session, conversation: str, kind: str, fields: dict) -> SendResult:
    """Send a :mod:`cli.features.kinds` payload to a conversation, applying it here first.

    Raises:
        As :func:`send_text`.
    """
    state = client.state
    p = KindPayload(kind, os.urandom(16), effects.now_ms(), state.name, conversation, fields)
    _apply_own(client, conversation, p)
    status = await _send(client, conversation, p)
    return SendResult(p.msg_id, status, conversation)


async def react(client: Session, msg_id: str, emoji: str) -> tuple[SendResult, dict]:
    """React to a message with ``emoji`` (``""`` removes this account's reaction).

    Returns:
        ``(result, target entry)``.

    Raises:
        ActionError: see :func:`find_message`. As :func:`send_text` otherwise.
    """
    entry = find_message(client.state, msg_id)
    result = await send_kind(client, effects.conversation_of(client.state, entry), "reaction",
                             {"target": bytes.fromhex(entry["id"]), "emoji": emoji})
    return result, entry


def _own(client: Session, msg_id: str, what: str) -> dict:
    entry = find_message(client.state, msg_id)
    if entry.get("from") != client.state.user_id:
        raise ActionError(f"you can only {what} your own messages")
    if entry.get("type") != "text" and what == "edit":
        raise ActionError("only text messages can be edited")
    return entry


async def edit(client: Session, msg_id: str, text: str) -> tuple[SendResult, dict]:
    """Replace the text of one of this account's messages, on every device.

    Raises:
        ActionError: not this account's text message. ValueError: text too long.
    """
    if not 0 < len(text) <= payload.MAX_TEXT:
        raise ValueError(f"text must be 1 to {payload.MAX_TEXT} characters")
    entry = _own(client, msg_id, "edit")
    result = await send_kind(client, effects.conversation_of(client.state, entry), "edit",
                             {"target": bytes.fromhex(entry["id"]), "text": text})
    return result, entry


async def delete(client: Session, msg_id: str) -> tuple[SendResult, dict]:
    """Delete one of this account's messages for everyone (its text and file leave
    every device's history; a row marked deleted stays).

    Raises:
        ActionError: not this account's message.
    """
    entry = _own(client, msg_id, "delete")
    result = await send_kind(client, effects.conversation_of(client.state, entry), "delete",
                             {"target": bytes.fromhex(entry["id"])})
    return result, entry


async def set_timer(client: Session, conversation: str, seconds: int) -> SendResult:
    """Set the conversation's disappearing timer (0: off) here and for everyone in it.

    Raises:
        ValueError: out of range. As :func:`send_text` otherwise.
    """
    if not 0 <= seconds <= MAX_EXPIRES:
        raise ValueError(f"a timer is 0 to {MAX_EXPIRES} seconds")
    return await send_kind(client, conversation, "timer", {"expires": seconds})


async def typing(client: Session, user_id: str, active: bool) -> int:
    """Tell ``user_id``'s connected devices (and this account's) that this account is
    typing (or stopped); nothing is stored anywhere. Returns the copies sent.

    Raises:
        SendFailed: nobody to send to. RelayError, ConnectionLost.
    """
    state = client.state
    p = KindPayload("typing", os.urandom(16), effects.now_ms(), state.name, user_id,
                    {"active": active})
    targets = [user_id] if user_id == state.user_id else [user_id, state.user_id]
    lists = {uid: await client.device_list(uid) for uid in targets}
    for _ in range(group_messaging.MAX_SEND_ROUNDS):
        recipients = await outbound.encrypt_for(client, lists, p.encode())
        if not recipients:
            raise SendFailed("no devices to send to")
        try:
            await client.request_encrypted(Send, msg_id=p.msg_id, recipients=recipients,
                                           ephemeral=True)
        except RelayError as exc:
            if exc.code != ErrorCode.STALE_DEVICES or exc.frame.device_list is None:
                raise
            lists[exc.frame.user_id] = state.remember_device_list(exc.frame.device_list,
                                                                  exc.frame.user_id)
            continue
        return sum(len(r.copies) for r in recipients)
    raise SendFailed("device lists kept changing")
