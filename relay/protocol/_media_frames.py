"""Media frames (DESIGN.md "Groups and media"): encrypted on the client, opaque to the node.

Re-exported by :mod:`relay.protocol.frames`, which is where to import them from.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ._frame_base import Frame


@dataclass(frozen=True, slots=True)
class MediaUpload(Frame):
    """Append ``chunk`` (at most 256 KiB) at ``offset`` of blob ``media_id`` on the
    sender's home. ``media_id`` = SHA-256 of the whole ciphertext (32 bytes);
    ``size`` = its total length in bytes. ``offset`` must equal the bytes already
    received (resume after ``media_status``). When the last chunk arrives the node
    checks the hash; a mismatch discards the blob (``bad_request``)."""

    TYPE: ClassVar[str] = "media_upload"
    media_id: bytes
    size: int
    offset: int
    chunk: bytes


@dataclass(frozen=True, slots=True)
class MediaStatus(Frame):
    """How much of ``media_id`` the node holds (to resume an upload)."""

    TYPE: ClassVar[str] = "media_status"
    media_id: bytes


@dataclass(frozen=True, slots=True)
class MediaProgress(Frame):
    """Answer to ``media_upload`` / ``media_status``: bytes received, total size
    (0 if unknown), and whether the blob is complete and verified."""

    TYPE: ClassVar[str] = "media_progress"
    received: int
    size: int
    complete: bool


@dataclass(frozen=True, slots=True)
class MediaDownload(Frame):
    """Read ``length`` (at most 256 KiB) bytes at ``offset`` of a complete blob held by
    node ``node_id`` (any node forwards to it)."""

    TYPE: ClassVar[str] = "media_download"
    node_id: str
    media_id: bytes
    offset: int
    length: int


@dataclass(frozen=True, slots=True)
class MediaChunk(Frame):
    """Answer to ``media_download``: ``data`` and the blob's total ``size``."""

    TYPE: ClassVar[str] = "media_chunk"
    data: bytes
    size: int
