"""What a decrypted payload does to a device's history, and the event it shows.

:func:`on_payload` is the one place where the receive paths (:mod:`cli.features.receiving` for
Olm, :mod:`cli.features.group_receiving` for Megolm) and the sending helpers
(:mod:`cli.features.actions`, for this device's own actions) apply a payload:

* **text / file**: a history entry (``reply_to`` and ``expires`` kept; ``expires_at``,
  ms, is the sender's ``ts`` plus the timer, the same on every device); a message from
  a stranger, or in a group whose invitation is not accepted, is *held*
  (:mod:`cli.session.prefs`): its entry is flagged ``held`` and a :class:`cli.events.Requested`
  is shown instead.
* **reaction**: the target entry's ``reactions`` map (user_id -> emoji; one reaction per
  user, ``""`` removes it).
* **edit / delete**: only the author's own message, in the same conversation: the
  entry's ``text`` is replaced and ``edited`` set (ms) / the text and file are wiped
  and ``deleted`` set; the journal is then compacted so the old text leaves the disk.
* **receipt**: the target entries this account sent get ``receipts`` (status ->
  user_ids); this account's own read receipts (copies from its other devices) mark
  the received entries ``read``.
* **timer**: the conversation's disappearing timer (:attr:`cli.session.prefs.Prefs.timers`).
* **typing**: nothing kept.

Messages from a blocked user are dropped (:class:`cli.events.Dropped`, acknowledged
like any other envelope). :func:`sweep` removes expired entries.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

from cli.events import Dropped, GroupChanged, Message, Requested
from cli.features import payload
from cli.features.kinds import KindPayload

if TYPE_CHECKING:
    from cli.session.state import State

__all__ = ["conversation_of", "event_extra", "now_ms", "on_group_changed", "on_payload", "sweep"]

log = logging.getLogger(__name__)


def now_ms() -> int:
    """Milliseconds since the Unix epoch."""
    return int(time.time() * 1000)


def conversation_of(state: State, entry: dict) -> str:
    """The conversation of a history entry: the group id (hex) or the peer's user_id."""
    return entry.get("group_id") or entry.get("peer", "")


def event_extra(p: payload.Payload) -> dict[str, Any]:
    """The kind-specific fields a :class:`cli.events.Message` of ``p`` carries (see
    docs/cli.md): ``reply_to``, ``expires_in``, ``reaction``, ``edit_of``, ``deleted``,
    ``receipt``, ``typing`` (ids in hex)."""
    if not isinstance(p, KindPayload):
        extra: dict[str, Any] = {}
        if p.reply_to is not None:
            extra["reply_to"] = p.reply_to.hex()
        if p.expires:
            extra["expires_in"] = p.expires
        return extra
    f = p.fields
    if p.type == "reaction":
        return {"reaction": {"target": f["target"].hex(), "emoji": f["emoji"]}}
    if p.type == "edit":
        return {"edit_of": f["target"].hex()}
    if p.type == "delete":
        return {"deleted": f["target"].hex()}
    if p.type == "receipt":
        return {"receipt": {"status": f["status"], "ids": [t.hex() for t in f["targets"]]}}
    if p.type == "typing":
        return {"typing": f["active"]}
    return {"expires_in": f["expires"]}  # timer


def _compact(state: State) -> None:
    """The journal is rewritten at the next save: old plaintext of wiped entries goes."""
    state.compact_history()


def sweep(state: State, now: int | None = None) -> int:
    """Remove every history entry whose ``expires_at`` (ms) has passed; returns how many
    (the next save rewrites the journal without them)."""
    now = now_ms() if now is None else now
    prefs = state.prefs
    if prefs.next_expiry is None or prefs.next_expiry > now:
        return 0
    keep = [e for e in state.history if not e.get("expires_at") or e["expires_at"] > now]
    removed = len(state.history) - len(keep)
    if removed:
        state.history.clear()
        state.history.extend(keep)
        _compact(state)
    pending = [e["expires_at"] for e in keep if e.get("expires_at")]
    prefs.next_expiry = min(pending) if pending else None
    return removed


def _schedule(state: State, expires_at: int) -> None:
    nxt = state.prefs.next_expiry
    state.prefs.next_expiry = expires_at if nxt is None else min(nxt, expires_at)


def _members(state: State, entry: dict) -> tuple[str, ...]:
    gid = entry.get("group_id")
    record = state.groups.groups.get(bytes.fromhex(gid)) if gid else None
    return record.state.members if record is not None else ()


def _target(state: State, target: bytes, conversation: str) -> dict | None:
    entry = state.find_history(target.hex())
    if entry is None or conversation_of(state, entry) != conversation:
        return None
    return entry


def _apply_kind(state: State, sender: str, p: KindPayload, conversation: str) -> str | None:
    """Apply a kind to history; a reason to drop it, or ``None``."""
    f = p.fields
    if p.type == "reaction":
        entry = _target(state, f["target"], conversation)
        if entry is not None and not entry.get("deleted"):
            reactions = dict(entry.get("reactions") or {})
            if f["emoji"]:
                reactions[sender] = f["emoji"]
            else:
                reactions.pop(sender, None)
            entry["reactions"] = reactions
            state.history_changed(entry)
    elif p.type in ("edit", "delete"):
        entry = _target(state, f["target"], conversation)
        if entry is not None:
            if entry.get("from") != sender:
                return f"{p.type} of a message {sender[:8]} did not write"
            if p.type == "edit" and not entry.get("deleted"):
                entry["text"], entry["edited"] = f["text"], p.ts
            elif p.type == "delete":
                entry.update(text="", deleted=True)
                entry.pop("file", None)
                entry.pop("reactions", None)
                _compact(state)
            state.history_changed(entry)
    elif p.type == "receipt":
        for target in f["targets"]:
            entry = state.find_history(target.hex())
            if entry is None:
                continue
            if sender == state.user_id:  # this account's own receipt, from another device
                if f["status"] == "read" and entry.get("direction") == "in":
                    entry["read"] = True
                    state.history_changed(entry)
            elif entry.get("from") == state.user_id and (
                    entry.get("peer") == sender or sender in _members(state, entry)):
                receipts = {k: list(v) for k, v in (entry.get("receipts") or {}).items()}
                for status in ("delivered", "read")[:2 if f["status"] == "read" else 1]:
                    if sender not in receipts.setdefault(status, []):
                        receipts[status].append(sender)
                entry["receipts"] = receipts
                state.history_changed(entry)
    elif p.type == "timer":
        state.prefs.set_timer(conversation, f["expires"])
    return None


def on_payload(
    state: State, sender_user: str, sender_device: int, p: payload.Payload, *,
    peer: str, group: tuple[str, str] | None = None,
) -> Message | Dropped | Requested | None:
    """Apply a decrypted, authenticated, deduplicated payload; returns the event to show.

    Args:
        state: the device state (changed in place; the caller saves it).
        sender_user, sender_device: the authenticated sender.
        p: the payload.
        peer: the conversation: the other user (for this account's own messages, the
            payload's ``to``), or the group id in hex.
        group: ``(name, hex id)`` for a group message (the caller checked that the
            sender is a member).

    Returns:
        The :class:`cli.events.Message` to show; a :class:`cli.events.Requested` for a
        held message; :class:`cli.events.Dropped` for a blocked sender or a forbidden
        change; ``None`` for what shows nothing (a stranger's typing, own receipts).
    """
    own = sender_user == state.user_id
    direction = "out" if own else "in"
    prefs = state.prefs

    def dropped(reason: str) -> Dropped:
        log.warning("dropping message %s from %s/%d: %s",
                    p.msg_id.hex()[:8], sender_user[:8], sender_device, reason)
        return Dropped(p.msg_id, sender_user, sender_device, reason)

    if not own and sender_user in prefs.blocked:
        return dropped("the sender is blocked")
    sweep(state)
    group_name, group_id = group if group else (None, None)
    conversation = group_id or peer
    held = not own and prefs.holds(sender_user, group_id, state.user_id, state.contacts)
    alias = None if own else state.alias_of(sender_user)
    if isinstance(p, KindPayload):
        if held:
            return None  # nothing from a stranger acts on this device before it is accepted
        reason = _apply_kind(state, sender_user, p, conversation)
        if reason is not None:
            return dropped(reason)
        if own and p.type in ("receipt", "typing"):
            return None
    else:
        entry = {
            "id": p.msg_id.hex(), "direction": direction, "peer": conversation,
            "from": sender_user, "from_device": sender_device, "ts": p.ts,
            "from_name": p.from_name, "resends": 0, **payload.history_fields(p),
        }
        if group_id:
            entry["group_id"] = group_id
        if p.expires:
            entry["expires_at"] = p.ts + p.expires * 1000
            _schedule(state, entry["expires_at"])
        if held:
            entry["held"] = True
        state.history.append(entry)
        if held:
            return prefs.hold(sender_user, p.from_name, p.msg_id, group_id, group_name)
    return Message(p.msg_id, sender_user, sender_device, direction, conversation, p.ts, p.type,
                   p.text, alias or p.from_name, p.from_name, group=group_name,
                   group_id=group_id, extra=event_extra(p) or None)


def on_group_changed(state: State, event: GroupChanged | None) -> GroupChanged | Requested | None:
    """A group change to show, or the request that holds an invitation: this account
    was just added (the group is new here) by a non-contact while requests are held.
    The group state is adopted either way (key shares need it); its messages are held
    until ``wa-cli requests accept GROUP_ID``."""
    if event is None or not state.prefs.hold_requests or event.left:
        return event
    invited = state.user_id in event.added and event.actor != state.user_id
    if invited and not state.prefs.known(event.actor, state.user_id, state.contacts):
        return state.prefs.hold(event.actor, "", None, event.group_id, event.name)
    return event
