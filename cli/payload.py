"""The end-to-end encrypted plaintext inside every Olm copy (never seen by a relay).

``msgpack {v: 1, type: "text", text, msg_id, ts, from_name, to}``:

* ``msg_id`` (16 bytes) repeats the envelope's message id *inside* the
  ciphertext, so a relay cannot replay a ciphertext under another id to slip
  past deduplication; a receiver drops a copy whose ids differ.
* ``ts`` is the sender's clock in milliseconds since the Unix epoch.
* ``from_name`` is the sender's self-declared display name (a hint only).
* ``to`` is the conversation peer's user_id (lets the sender's other devices
  show what was sent).

Later versions add types (``file``, group messages); receivers drop unknown
``v`` or ``type`` values with a warning.
"""

from __future__ import annotations

from dataclasses import dataclass

import msgpack

VERSION = 1
MAX_TEXT = 60_000  # characters; keeps a copy far below the 1 MiB frame limit


class PayloadError(ValueError):
    """A decrypted payload is malformed or of an unknown version/type."""


@dataclass(frozen=True, slots=True)
class TextPayload:
    """A decoded text message payload."""

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


def decode(plaintext: bytes) -> TextPayload:
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
    if m.get("type") != "text":
        raise PayloadError(f"unsupported payload type {m.get('type')!r}")
    text, msg_id, ts = m.get("text"), m.get("msg_id"), m.get("ts")
    from_name, to = m.get("from_name", ""), m.get("to", "")
    if not (isinstance(text, str) and isinstance(msg_id, bytes) and len(msg_id) == 16
            and type(ts) is int and isinstance(from_name, str) and isinstance(to, str)):
        raise PayloadError("payload fields have wrong types")
    return TextPayload(msg_id=msg_id, text=text, ts=ts, from_name=from_name[:100], to=to)
