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
key and hash (:mod:`cli.attachment`), ``text`` being the caption. Receivers drop
unknown ``v`` or ``type`` values with a warning.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import msgpack

from cli.features.attachment import Attachment, AttachmentError

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

    def encode(self) -> bytes:
        """The msgpack plaintext to encrypt."""
        return msgpack.packb(
            {"v": VERSION, "type": "text", "text": self.text, "msg_id": self.msg_id,
             "ts": self.ts, "from_name": self.from_name, "to": self.to},
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

    def encode(self) -> bytes:
        """The msgpack plaintext to encrypt."""
        return msgpack.packb(
            {"v": VERSION, "type": "file", "text": self.text, "msg_id": self.msg_id,
             "ts": self.ts, "from_name": self.from_name, "to": self.to,
             **self.attachment.to_map()},
            use_bin_type=True,
        )


Payload = TextPayload | FilePayload


def history_fields(p: Payload) -> dict[str, Any]:
    """The ``type``/``text`` (and for files ``file``: the attachment map plus ``path``,
    the saved path once downloaded) of a local history entry for ``p``."""
    fields: dict[str, Any] = {"type": p.type, "text": p.text}
    if isinstance(p, FilePayload):
        fields["file"] = {**p.attachment.to_map(), "path": None}
    return fields


def from_history(msg_id: bytes, entry: dict[str, Any]) -> Payload:
    """Rebuild the payload of a sent message from its history entry (to resend it).

    Raises:
        PayloadError: a file entry whose attachment fields are malformed.
    """
    if entry.get("type") == "file":
        try:
            att = Attachment.from_map(entry["file"])
        except (AttachmentError, KeyError) as exc:
            raise PayloadError(f"history entry of a file is malformed: {exc}") from exc
        return FilePayload(msg_id, entry["text"], entry["ts"], entry["from_name"], entry["peer"],
                           att)
    return TextPayload(msg_id, entry["text"], entry["ts"], entry["from_name"], entry["peer"])


def decode(plaintext: bytes) -> Payload:
    """Parse and type-check a decrypted payload.

    Raises:
        PayloadError: not msgpack, unknown version or type, missing or mistyped fields.
    """
    try:
        m = msgpack.unpackb(plaintext, raw=False, strict_map_key=True, max_ext_len=0,
                            max_map_len=32, max_array_len=32)
    except (ValueError, msgpack.UnpackException) as exc:
        raise PayloadError(f"payload is not msgpack: {exc}") from exc
    if not isinstance(m, dict) or m.get("v") != VERSION:
        raise PayloadError("unknown payload version")
    if m.get("type") not in ("text", "file"):
        raise PayloadError(f"unsupported payload type {m.get('type')!r}")
    text, msg_id, ts = m.get("text"), m.get("msg_id"), m.get("ts")
    from_name, to = m.get("from_name", ""), m.get("to", "")
    if not (isinstance(text, str) and isinstance(msg_id, bytes) and len(msg_id) == 16
            and type(ts) is int and isinstance(from_name, str) and isinstance(to, str)):
        raise PayloadError("payload fields have wrong types")
    if m["type"] == "file":
        try:
            att = Attachment.from_map(m)
        except AttachmentError as exc:
            raise PayloadError(str(exc)) from exc
        return FilePayload(msg_id=msg_id, text=text, ts=ts, from_name=from_name[:100], to=to,
                           attachment=att)
    return TextPayload(msg_id=msg_id, text=text, ts=ts, from_name=from_name[:100], to=to)
