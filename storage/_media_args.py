"""Checks of the media methods shared by the built-in backends (see
:class:`storage.base.Storage`, "media"), so both reject the same inputs:
argument checks (``ValueError``/``TypeError``), whether an append continues
the stored blob (:class:`~storage.errors.MediaConflict`), and the quota rule."""

from __future__ import annotations

from ._keys import check_bytes
from .base import MEDIA_CHUNK_MAX, MEDIA_ID_SIZE, MediaInfo
from .errors import MediaConflict

MAX_MEDIA_SIZE = 2**63 - 1


def check_media_id(media_id: bytes) -> bytes:
    """Return ``media_id`` as bytes. Raises ValueError unless it is 32 bytes."""
    raw = check_bytes("media_id", media_id)
    if len(raw) != MEDIA_ID_SIZE:
        raise ValueError(f"media_id must be {MEDIA_ID_SIZE} bytes, not {len(raw)}")
    return raw


def _check_int(name: str, value: int, high: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{name} must be int, not {type(value).__name__}")
    if not 0 <= value <= high:
        raise ValueError(f"{name} out of range: {value}")


def check_media_append(size: int, offset: int, chunk_len: int) -> None:
    """Check an append's own consistency: ``size``/``offset`` >= 0, a chunk of
    1..MEDIA_CHUNK_MAX bytes (0 only when ``size`` is 0) that ends at most at ``size``.

    Raises:
        ValueError, TypeError.
    """
    _check_int("size", size, MAX_MEDIA_SIZE)
    _check_int("offset", offset, MAX_MEDIA_SIZE)
    if chunk_len > MEDIA_CHUNK_MAX:
        raise ValueError(f"a chunk carries at most {MEDIA_CHUNK_MAX} bytes, not {chunk_len}")
    if chunk_len == 0 and size != 0:
        raise ValueError("empty chunk")
    if offset + chunk_len > size:
        raise ValueError(f"chunk ends at {offset + chunk_len}, past the size {size}")


def check_media_read(size: int, offset: int, length: int) -> None:
    """Raises ValueError/TypeError unless ``0 <= offset <= size`` and
    ``0 <= length <= MEDIA_CHUNK_MAX``."""
    _check_int("offset", offset, MAX_MEDIA_SIZE)
    _check_int("length", length, MEDIA_CHUNK_MAX)
    if offset > size:
        raise ValueError(f"offset {offset} is past the size {size}")


def check_continues(info: MediaInfo | None, size: int, offset: int, owner: str) -> None:
    """Check that an append continues the stored blob ``info`` (``None``: no blob yet).

    Raises:
        MediaConflict: another declared size, another owner's unfinished upload,
            or ``offset`` is not the bytes received so far.
    """
    received = 0 if info is None else info.received
    if info is not None and info.size != size:
        raise MediaConflict(f"blob has size {info.size}, not {size}")
    if info is not None and info.owner != owner:
        raise MediaConflict("another user's upload of this blob is in progress")
    if offset != received:
        raise MediaConflict(f"offset {offset} is not the {received} bytes received")


def over_quota(used: int, info: MediaInfo | None, size: int, adding: int,
               max_total: int | None) -> bool:
    """True if an append of ``adding`` bytes must be refused: the store would hold more
    than ``max_total`` bytes, or a new blob's whole ``size`` could never fit."""
    if max_total is None:
        return False
    return used + adding > max_total or (info is None and used + size > max_total)
