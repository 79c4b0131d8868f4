"""Argument checks shared by the built-in backends, so they reject the same inputs.

A ``user_id`` is a non-empty ``str`` of at most 255 UTF-8 bytes without ``"|"`` or
NUL (real ones are 52-char base32); a ``device_id`` is an ``int`` in ``0 .. 2**32-1``.
Both limits let the LMDB backend build fixed-layout, prefix-scannable keys.
"""

from __future__ import annotations

MAX_USER_ID_BYTES = 255
MAX_DEVICE_ID = 2**32 - 1


def check_user_id(user_id: str) -> bytes:
    """Return ``user_id`` as UTF-8 bytes. Raises ValueError/TypeError if it is malformed."""
    if not isinstance(user_id, str):
        raise TypeError(f"user_id must be str, not {type(user_id).__name__}")
    raw = user_id.encode("utf-8")
    if not raw or len(raw) > MAX_USER_ID_BYTES or b"|" in raw or b"\x00" in raw:
        raise ValueError(f"malformed user_id {user_id!r}")
    return raw


def check_device_id(device_id: int) -> int:
    """Return ``device_id`` unchanged. Raises ValueError/TypeError if out of range."""
    if not isinstance(device_id, int) or isinstance(device_id, bool):
        raise TypeError(f"device_id must be int, not {type(device_id).__name__}")
    if not 0 <= device_id <= MAX_DEVICE_ID:
        raise ValueError(f"device_id out of range: {device_id}")
    return device_id


def check_bytes(name: str, value: bytes) -> bytes:
    """Return ``value`` as ``bytes`` (accepts bytes-like). Raises TypeError otherwise."""
    if isinstance(value, bytes):
        return value
    if isinstance(value, bytearray | memoryview):
        return bytes(value)
    raise TypeError(f"{name} must be bytes, not {type(value).__name__}")


MAX_KEY_ID_BYTES = 200
MAX_DEDUPE_BYTES = 255


def check_key_id(key_id: str) -> bytes:
    """Return a one-time/fallback key id as UTF-8 bytes (1..200 bytes). Raises ValueError."""
    if not isinstance(key_id, str):
        raise TypeError(f"key_id must be str, not {type(key_id).__name__}")
    raw = key_id.encode("utf-8")
    if not raw or len(raw) > MAX_KEY_ID_BYTES:
        raise ValueError(f"malformed key id {key_id!r}")
    return raw


def check_dedupe(dedupe: bytes) -> bytes:
    """Return a dedupe id as bytes (1..255 bytes). Raises ValueError/TypeError."""
    raw = check_bytes("dedupe", dedupe)
    if not raw or len(raw) > MAX_DEDUPE_BYTES:
        raise ValueError(f"dedupe id must be 1..{MAX_DEDUPE_BYTES} bytes")
    return raw
