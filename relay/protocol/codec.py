"""msgpack framing with hard limits: one msgpack map per WebSocket binary frame.

Decoding untrusted bytes raises only :class:`~relay.protocol.errors.RemoteProtocolError`
and allocates memory bounded by :class:`Limits`, whatever the length prefixes
inside claim (msgpack checks ``max_*_len`` before allocating).

Nesting: msgpack's own stack bounds it (:data:`MAX_NESTING` levels, ``bad_frame``
beyond). Nothing in :mod:`relay.protocol` walks a decoded value recursively
beyond the frame schema (a few levels), and no error message holds a
``repr`` of a decoded value, so deep values inside the limit cost no Python
recursion; a ``RecursionError`` that still happens while decoding (msgpack's
pure-Python fallback recurses per level) is translated to ``bad_frame``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgpack

from .errors import CloseCode, ErrorCode, RemoteProtocolError

MiB = 1024 * 1024
MAX_NESTING = 1024  # msgpack's unpacker stack: deeper arrays/maps raise StackError


@dataclass(frozen=True, slots=True)
class Limits:
    """Hard bounds applied to every decoded frame.

    Attributes:
        max_frame: largest accepted frame, bytes (default 1 MiB).
        max_bin: largest single ``bin`` field, bytes.
        max_str: largest single ``str`` field, bytes.
        max_array: most elements of one array.
        max_map: most entries of one map.
        max_copies: most ciphertext copies in one ``send`` (all recipients together).
    """

    max_frame: int = 1 * MiB
    max_bin: int = 1 * MiB
    max_str: int = 64 * 1024
    max_array: int = 4096
    max_map: int = 64
    max_copies: int = 1024


DEFAULT_LIMITS = Limits()


def encode(obj: dict[str, Any]) -> bytes:
    """Serialise one frame map to msgpack bytes (``use_bin_type=True``)."""
    return msgpack.packb(obj, use_bin_type=True)


def decode(data: bytes | bytearray | str, limits: Limits = DEFAULT_LIMITS) -> dict[str, Any]:
    """Parse one frame from untrusted bytes.

    Args:
        data: the WebSocket message. Text messages (``str``) are rejected.
        limits: the bounds to enforce.

    Returns:
        The decoded map, string keys only.

    Raises:
        RemoteProtocolError: ``too_large`` (close 1009) for an oversized frame;
            ``bad_frame`` for text frames, invalid msgpack, trailing bytes,
            non-string map keys, lengths above the limits, nesting deeper than
            :data:`MAX_NESTING`, or a non-map top level. The message is never empty.
    """
    if isinstance(data, str):
        raise RemoteProtocolError(
            ErrorCode.BAD_FRAME, "text frames are not accepted; send binary msgpack",
            close_code=CloseCode.UNSUPPORTED_DATA,
        )
    if len(data) > limits.max_frame:
        raise RemoteProtocolError(
            ErrorCode.TOO_LARGE, f"frame of {len(data)} bytes exceeds {limits.max_frame}",
            close_code=CloseCode.MESSAGE_TOO_BIG,
        )
    try:
        obj = msgpack.unpackb(
            bytes(data),
            raw=False,
            strict_map_key=True,
            use_list=True,
            max_bin_len=limits.max_bin,
            max_str_len=limits.max_str,
            max_array_len=limits.max_array,
            max_map_len=limits.max_map,
            max_ext_len=0,
        )
    except (msgpack.StackError, RecursionError) as exc:
        raise RemoteProtocolError(
            ErrorCode.BAD_FRAME, f"invalid msgpack: arrays/maps nested deeper than {MAX_NESTING}"
        ) from exc
    except (ValueError, msgpack.UnpackException) as exc:
        # ExtraData, FormatError and UnicodeDecodeError all derive from
        # ValueError or UnpackException.
        raise RemoteProtocolError(
            ErrorCode.BAD_FRAME, f"invalid msgpack: {exc or type(exc).__name__}"
        ) from exc
    if not isinstance(obj, dict):
        raise RemoteProtocolError(ErrorCode.BAD_FRAME, "a frame must be a msgpack map")
    return obj
