"""A device's messaging preferences and held message requests (saved in ``state.bin``).

* ``timers``: conversation (user_id or group id in hex) -> disappearing timer, seconds.
* ``blocked``: user_ids whose messages are dropped (and acknowledged).
* ``hold_requests``: hold a stranger's messages, and invitations to groups by a
  non-contact, until accepted (on by default; ``wa-cli settings --requests show``
  turns it off).
* ``accepted``: user_ids accepted without becoming contacts (and every user this
  device wrote to); ``requests``: what waits, per user_id or group id (hex).
* ``receipts``: send delivery and read receipts (on by default; ``wa-cli settings
  --receipts off`` turns them off).

A *stranger* is a user who is not this account, not a contact and not accepted.
A message in a group is held while the group's invitation waits, whoever sent it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from cli.events import Requested

__all__ = ["Prefs"]

MAX_HELD_IDS = 200  # msg ids remembered per request (the entries are in history)


@dataclass
class Prefs:
    """See the module docstring. Mutate, then save the state."""

    timers: dict[str, int] = field(default_factory=dict)
    blocked: set[str] = field(default_factory=set)
    hold_requests: bool = True
    accepted: set[str] = field(default_factory=set)
    requests: dict[str, dict[str, Any]] = field(default_factory=dict)
    receipts: bool = True
    next_expiry: int | None = None  # ms: the earliest expires_at in history (None: none)

    # ------------------------------------------------------------ timers

    def set_timer(self, conversation: str, seconds: int) -> None:
        """Set (``seconds`` > 0) or clear (0) a conversation's disappearing timer."""
        if seconds:
            self.timers[conversation] = seconds
        else:
            self.timers.pop(conversation, None)

    # ------------------------------------------------------------ requests

    def known(self, user_id: str, me: str, contacts: Mapping[str, str]) -> bool:
        """Whether ``user_id`` is this account (``me``), a contact (``contacts``: alias ->
        user_id) or accepted."""
        return user_id == me or user_id in self.accepted or user_id in contacts.values()

    def holds(self, sender_user: str, group_id: str | None, me: str,
              contacts: Mapping[str, str]) -> bool:
        """Whether a message from ``sender_user`` (in group ``group_id``, hex) is held."""
        if not self.hold_requests:
            return False
        if group_id is not None:
            return group_id in self.requests
        return not self.known(sender_user, me, contacts)

    def hold(self, sender_user: str, declared: str, msg_id: bytes | None, group_id: str | None,
             group_name: str | None) -> Requested:
        """Record a held message (or, with ``msg_id`` ``None``, a group invitation);
        returns the event announcing it."""
        key = group_id or sender_user
        req = self.requests.setdefault(key, {
            "kind": "group" if group_id else "user", "from": sender_user,
            "declared": declared, "group": group_name, "ids": []})
        if msg_id is not None and len(req["ids"]) < MAX_HELD_IDS:
            req["ids"].append(msg_id.hex())
        return Requested(key, req["kind"], sender_user, declared, group_name,
                         msg_id.hex() if msg_id else None)

    def accept(self, key: str) -> dict[str, Any]:
        """Accept a waiting request (user_id or group id); returns it.

        Raises:
            KeyError: nothing waits under ``key``.
        """
        req = self.requests.pop(key)
        if req["kind"] == "user":
            self.accepted.add(key)
        return req

    # ------------------------------------------------------------ persistence

    def to_map(self) -> dict:
        """Msgpack-ready form (``state.bin``'s ``prefs``)."""
        return {"timers": self.timers, "blocked": sorted(self.blocked),
                "hold_requests": self.hold_requests, "accepted": sorted(self.accepted),
                "requests": self.requests, "receipts": self.receipts,
                "next_expiry": self.next_expiry}

    @classmethod
    def from_map(cls, m: dict | None) -> Prefs:
        """Inverse of :meth:`to_map`; ``None`` (a state saved before prefs existed) gives
        the defaults.

        Raises:
            KeyError, TypeError, ValueError: malformed.
        """
        if not m:
            return cls()
        return cls(dict(m["timers"]), set(m["blocked"]), bool(m["hold_requests"]),
                   set(m["accepted"]), dict(m["requests"]), bool(m["receipts"]),
                   m.get("next_expiry"))
