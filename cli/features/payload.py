"""The end-to-end encrypted plaintext inside every Olm copy (never seen by a relay).

``msgpack {v: 1, type: "text", text, msg_id, ts, from_name, to}``:

* ``msg_id`` (16 bytes) repeats the envelope's message id *inside* the
  ciphertext, so a relay cannot replay a ciphertext under another id to slip
  past deduplication; a receiver drops a copy whose ids differ.
* ``ts`` is the sender's clock in milliseconds since the Unix epoch.
* ``from_name`` is the sender's self-declared display name (a hint only).
* ``to`` is the conversation peer's user_id (lets the sender's other devices
  show what was sent).

``type: "file"`` (:class:`FilePayload`) carries an encrypted file's reference,
key and hash (:mod:`cli.attachment`), ``text`` being the caption. Text and file
payloads may carry ``reply_to`` and ``expires``; the other kinds (reactions, edits,
deletes, receipts, typing, timers) are :class:`cli.features.kinds.KindPayload` s. Receivers drop
unknown ``v`` or ``type`` values with a warning.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import msgpack

from cli.features.attachment import Attachment, AttachmentError
from cli.features.kinds import KINDS, KindError, KindPayload, check_extras, check_kind
from relay.protocol.codec import refuse_ext

VERSION = 1
MAX_TEXT = 60_000  # characters; keeps a copy far below the 1 MiB frame limit


class PayloadError(ValueError):
    """A decrypted payload is malformed or of an unknown version/type."""


@dataclass(frozen=True, slots=True)
class TextPayload:
    """A decoded text message payload."""

    type: ClassVar[str] = "text"
    msg_id: bytes
    text: str
    ts: int
    from_name: str
    to: str
    reply_to: bytes | None = None
    expires: int = 0

    def encode(self) -> bytes:
        """The msgpack plaintext to encrypt."""
        return msgpack.packb(
            {"v": VERSION, "type": "text", "text": self.text, "msg_id": self.msg_id,
             "ts": self.ts, "from_name": self.from_name, "to": self.to,
             **_extras(self.reply_to, self.expires)},
            use_bin_type=True,
        )


@dataclass(frozen=True, slots=True)
class FilePayload:
    """A decoded file message: ``attachment`` with ``text`` as the caption (may be empty)."""

    type: ClassVar[str] = "file"
    msg_id: bytes
    text: str
    ts: int
    from_name: str
    to: str
    attachment: Attachment
    reply_to: bytes | None = None
    expires: int = 0

    def encode(self) -> bytes:
        """The msgpack plaintext to encrypt."""
        return msgpack.packb(
            {"v": VERSION, "type": "file", "text": self.text, "msg_id": self.msg_id,
             "ts": self.ts, "from_name": self.from_name, "to": self.to,
             **self.attachment.to_map(), **_extras(self.reply_to, self.expires)},
            use_bin_type=True,
        )


def _extras(reply_to: bytes | None, expires: int) -> dict[str, Any]:
    extras: dict[str, Any] = {}
    if reply_to is not None:
        extras["reply_to"] = reply_to
    if expires:
        extras["expires"] = expires
    return extras


Payload = TextPayload | FilePayload | KindPayload


def history_fields(p: Payload) -> dict[str, Any]:
    """The ``type``/``text`` (and for files ``file``: the attachment map plus ``path``,
    the saved path once downloaded; ``reply_to`` in hex and ``expires`` (s) when set)
    of a local history entry for a text or file payload ``p``."""
    fields: dict[str, Any] = {"type": p.type, "text": p.text}
    if isinstance(p, FilePayload):
        fields["file"] = {**p.attachment.to_map(), "path": None}
    if isinstance(p, TextPayload | FilePayload):
        if p.reply_to is not None:
            fields["reply_to"] = p.reply_to.hex()
        if p.expires:
            fields["expires"] = p.expires
    return fields


def from_history(msg_id: bytes, entry: dict[str, Any]) -> Payload:
    """Rebuild the payload of a sent message from its history entry (to resend it).

    Raises:
        PayloadError: a file entry whose attachment fields are malformed.
    """
    reply_to = bytes.fromhex(entry["reply_to"]) if entry.get("reply_to") else None
    expires = entry.get("expires", 0)
    if entry.get("type") == "file":
        try:
            att = Attachment.from_map(entry["file"])
        except (AttachmentError, KeyError) as exc:
            raise PayloadError(f"history entry of a file is malformed: {exc}") from exc
        return FilePayload(msg_id, entry["text"], entry["ts"], entry["from_name"], entry["peer"],
                           att, reply_to, expires)
    if entry.get("type") in KINDS:
        return KindPayload(entry["type"], msg_id, entry["ts"], entry["from_name"], entry["peer"],
                           dict(entry.get("fields", {})))
    return TextPayload(msg_id, entry["text"], entry["ts"], entry["from_name"], entry["peer"],
                       reply_to, expires)


def decode(plaintext: bytes) -> Payload:
    """Parse and type-check a decrypted payload.

    Raises:
        PayloadError: not msgpack, unknown version or type, missing or mistyped fields.
    """
    try:
        m = msgpack.unpackb(plaintext, raw=False, strict_map_key=True, ext_hook=refuse_ext,
                            max_map_len=32, max_array_len=32)
    except (ValueError, msgpack.UnpackException) as exc:
        raise PayloadError(f"payload is not msgpack: {exc}") from exc
    if not isinstance(m, dict) or m.get("v") != VERSION:
        raise PayloadError("unknown payload version")
    kind = m.get("type")
    if kind not in ("text", "file") and kind not in KINDS:
        raise PayloadError(f"unsupported payload type {kind!r}")
    text, msg_id, ts = m.get("text", ""), m.get("msg_id"), m.get("ts")
    from_name, to = m.get("from_name", ""), m.get("to", "")
    if not (isinstance(text, str) and isinstance(msg_id, bytes) and len(msg_id) == 16
            and type(ts) is int and isinstance(from_name, str) and isinstance(to, str)):
        raise PayloadError("payload fields have wrong types")
    try:
        if kind in KINDS:
            return KindPayload(kind, msg_id, ts, from_name[:100], to,
                               check_kind(kind, m, MAX_TEXT))
        if "text" not in m:
            raise KindError(f"a {kind} payload has no text")
        reply_to, expires = check_extras(m)
    except KindError as exc:
        raise PayloadError(str(exc)) from exc
    if kind == "file":
        try:
            att = Attachment.from_map(m)
        except AttachmentError as exc:
            raise PayloadError(str(exc)) from exc
        return FilePayload(msg_id=msg_id, text=text, ts=ts, from_name=from_name[:100], to=to,
                           attachment=att, reply_to=reply_to, expires=expires)
    return TextPayload(msg_id=msg_id, text=text, ts=ts, from_name=from_name[:100], to=to,
                       reply_to=reply_to, expires=expires)
