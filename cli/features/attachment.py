"""The reference to an encrypted file that a message carries (docs/media.md).

Inside the end-to-end encrypted payload of a ``file`` message (never seen by a
relay), next to ``v, type, msg_id, ts, from_name, to, text`` (the caption)::

    ref:    {node_id, media_id (32 bytes), size (ciphertext bytes)}
    key:    32 bytes, the XChaCha20-Poly1305 secretstream key of this file only
    sha256: 32 bytes, SHA-256 of the whole ciphertext (checked before decrypting)
    size:   plaintext bytes
    name:   the sender's file name (a hint: the receiver sanitises it)
    mime:   a MIME type guessed from the name by the sender
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass
from typing import Any

MAX_NAME = 200  # characters kept of a received file name
DEFAULT_MIME = "application/octet-stream"


class AttachmentError(ValueError):
    """A ``file`` payload's fields are missing or malformed."""


@dataclass(frozen=True, slots=True)
class Attachment:
    """Everything needed to fetch, check and decrypt one file.

    Attributes:
        node_id: the node that holds the ciphertext (the sender's home).
        media_id: SHA-256 of the ciphertext: the blob's address on ``node_id``.
        enc_size: ciphertext bytes.
        key: 32-byte secretstream key.
        sha256: SHA-256 of the ciphertext the receiver must get.
        size: plaintext bytes.
        name: file name as the sender gave it.
        mime: MIME type.
    """

    node_id: str
    media_id: bytes
    enc_size: int
    key: bytes
    sha256: bytes
    size: int
    name: str
    mime: str

    def to_map(self) -> dict[str, Any]:
        """The payload fields (msgpack-ready, see the module docstring)."""
        return {
            "ref": {"node_id": self.node_id, "media_id": self.media_id, "size": self.enc_size},
            "key": self.key, "sha256": self.sha256, "size": self.size, "name": self.name,
            "mime": self.mime,
        }

    @classmethod
    def from_map(cls, m: dict[str, Any]) -> Attachment:
        """Parse and type-check payload fields.

        Raises:
            AttachmentError: a field is missing, mistyped or out of range.
        """
        ref = m.get("ref")
        if not isinstance(ref, dict):
            raise AttachmentError("file payload without a ref")
        node_id, media_id, enc_size = ref.get("node_id"), ref.get("media_id"), ref.get("size")
        key, sha256, size = m.get("key"), m.get("sha256"), m.get("size")
        name, mime = m.get("name", ""), m.get("mime", DEFAULT_MIME)
        if not (isinstance(node_id, str) and node_id and isinstance(media_id, bytes)
                and len(media_id) == 32 and type(enc_size) is int and enc_size >= 0
                and isinstance(key, bytes) and len(key) == 32 and isinstance(sha256, bytes)
                and len(sha256) == 32 and type(size) is int and 0 <= size <= enc_size
                and isinstance(name, str) and isinstance(mime, str)):
            raise AttachmentError("file payload fields have wrong types")
        return cls(node_id, media_id, enc_size, key, sha256, size, name[:1000], mime[:200])


def safe_name(name: str) -> str:
    """A file name safe to create in a downloads directory: the last path
    component only, no control characters, no leading dot, at most
    :data:`MAX_NAME` characters (the extension kept); ``"file"`` if nothing is left."""
    base = name.replace("\\", "/").rsplit("/", 1)[-1]
    base = "".join(ch for ch in base if unicodedata.category(ch)[0] != "C").strip()
    base = base.lstrip(".").strip()
    if len(base) > MAX_NAME:
        stem, dot, ext = base.rpartition(".")
        if dot and 0 < len(ext) <= 16:
            base = stem[:MAX_NAME - len(ext) - 1] + "." + ext
        else:
            base = base[:MAX_NAME]
    return base or "file"
