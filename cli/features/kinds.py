"""The message kinds beside text and file, inside the same end-to-end encrypted payload.

Every kind is a :mod:`cli.features.payload` plaintext ``{v: 1, type, msg_id, ts, from_name,
to, ...}`` (``to``: the peer's user_id, or the group id in hex) with these fields
(all checked on receipt; a malformed one is dropped like any bad payload):

=============  ===================================================================
``type``       fields
=============  ===================================================================
``reaction``   ``target`` (16-byte msg_id), ``emoji`` (1..:data:`MAX_EMOJI`
               characters; ``""`` removes this sender's reaction)
``edit``       ``target``, ``text`` (the new text, 1..``MAX_TEXT`` characters)
``delete``     ``target`` (delete for everyone: only the author's own message)
``receipt``    ``status`` (``delivered`` | ``read``), ``targets`` (1..:data:`MAX_TARGETS`
               msg_ids)
``typing``     ``active`` (bool); sent *ephemeral* (never queued, docs/protocol.md)
``timer``      ``expires`` (seconds, 0 = off): the conversation's disappearing timer
=============  ===================================================================

A ``text`` or ``file`` payload may also carry ``reply_to`` (16-byte msg_id of the
quoted message) and ``expires`` (seconds: the message disappears ``expires`` seconds
after its ``ts``, on every device; :mod:`cli.features.effects`).

Nothing here touches the network or the state.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import msgpack

__all__ = [
    "KINDS", "MAX_EMOJI", "MAX_EXPIRES", "MAX_TARGETS", "RECEIPT_STATUSES", "KindError",
    "KindPayload", "check_extras", "check_kind",
]

KINDS = frozenset({"reaction", "edit", "delete", "receipt", "typing", "timer"})
"""The payload types this module defines."""
EPHEMERAL = frozenset({"typing"})
"""Kinds sent with the relay's ``ephemeral`` flag: shown live, never stored."""
MAX_EMOJI = 16  # characters (an emoji with modifiers and joiners)
MAX_TARGETS = 32  # msg_ids per receipt (payload arrays hold at most 32 items)
MAX_EXPIRES = 366 * 24 * 3600  # seconds: a year
RECEIPT_STATUSES = ("delivered", "read")
ID_SIZE = 16


class KindError(ValueError):
    """A kind's fields are missing, mistyped or out of range."""


def _id(value: Any, what: str) -> bytes:
    if not (isinstance(value, bytes) and len(value) == ID_SIZE):
        raise KindError(f"{what} must be a 16-byte message id")
    return value


def _expires(value: Any) -> int:
    if type(value) is not int or not 0 <= value <= MAX_EXPIRES:
        raise KindError(f"expires must be 0 to {MAX_EXPIRES} seconds")
    return value


def check_kind(kind: str, fields: dict[str, Any], max_text: int) -> dict[str, Any]:
    """The checked kind-specific ``fields`` of a payload of type ``kind`` (only the
    fields the kind defines are kept).

    Raises:
        KindError: unknown kind, or a field missing, mistyped or out of range.
    """
    if kind == "reaction":
        emoji = fields.get("emoji")
        if not isinstance(emoji, str) or len(emoji) > MAX_EMOJI:
            raise KindError(f"a reaction is 0 to {MAX_EMOJI} characters")
        return {"target": _id(fields.get("target"), "target"), "emoji": emoji}
    if kind == "edit":
        text = fields.get("text")
        if not isinstance(text, str) or not 0 < len(text) <= max_text:
            raise KindError(f"an edit's text is 1 to {max_text} characters")
        return {"target": _id(fields.get("target"), "target"), "text": text}
    if kind == "delete":
        return {"target": _id(fields.get("target"), "target")}
    if kind == "receipt":
        targets, status = fields.get("targets"), fields.get("status")
        if status not in RECEIPT_STATUSES:
            raise KindError(f"a receipt's status is one of {', '.join(RECEIPT_STATUSES)}")
        if not isinstance(targets, list) or not 0 < len(targets) <= MAX_TARGETS:
            raise KindError(f"a receipt names 1 to {MAX_TARGETS} messages")
        return {"status": status, "targets": [_id(t, "target") for t in targets]}
    if kind == "typing":
        if not isinstance(fields.get("active"), bool):
            raise KindError("typing.active must be a boolean")
        return {"active": fields["active"]}
    if kind == "timer":
        return {"expires": _expires(fields.get("expires"))}
    raise KindError(f"unsupported payload type {kind!r}")


def check_extras(m: dict[str, Any]) -> tuple[bytes | None, int]:
    """``(reply_to, expires)`` of a text or file payload map (``None``/0 when absent).

    Raises:
        KindError: present but malformed.
    """
    reply_to = m.get("reply_to")
    return (None if reply_to is None else _id(reply_to, "reply_to"),
            _expires(m.get("expires", 0)))


@dataclass(frozen=True, slots=True)
class KindPayload:
    """A decoded payload of one of :data:`KINDS`.

    Attributes:
        type: the kind.
        msg_id, ts, from_name, to: as every payload (:mod:`cli.features.payload`).
        fields: the kind's checked fields (:func:`check_kind`).
    """

    type: str
    msg_id: bytes
    ts: int
    from_name: str
    to: str
    fields: dict[str, Any] = field(default_factory=dict)

    @property
    def text(self) -> str:
        """The new text of an edit, else ``""`` (what a row of text shows)."""
        return self.fields.get("text", "") if self.type == "edit" else ""

    def encode(self) -> bytes:
        """The msgpack plaintext to encrypt."""
        return msgpack.packb(
            {"v": 1, "type": self.type, "msg_id": self.msg_id, "ts": self.ts,
             "from_name": self.from_name, "to": self.to, **self.fields},
            use_bin_type=True,
        )
