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

from dataclasses import dataclass, replace
from typing import Any

import msgpack

from .errors import CloseCode, ErrorCode, RemoteProtocolError

MiB = 1024 * 1024
KiB = 1024
MAX_NESTING = 1024  # msgpack's unpacker stack: deeper arrays/maps raise StackError

DEFAULT_MAX_ENVELOPE = 256 * KiB
"""Bytes, the default largest envelope body (one ciphertext copy or group ciphertext)."""

ENVELOPE_OVERHEAD = 512
"""Bytes, an upper bound of what one envelope adds around its body in any frame that
carries it: the envelope map (msg_id 16, sender_user 52, sender_device, ts, kind, keys:
under 140 bytes) plus a ``deliver`` entry (seq, keys: under 30) plus a frame header
(``t``, ``id``: under 30). A body of ``max_envelope`` bytes therefore always fits a
frame of ``max_envelope + ENVELOPE_OVERHEAD`` bytes (docs/protocol.md, "Size budget")."""

PEER_FRAME_SLACK = 64 * KiB
"""Bytes a node-to-node frame may exceed ``max_frame`` by: a ``forward`` carries at most
the copies of one client frame (at most ``max_frame``) plus its own header
(``sender_user``, ``ts``, ... : under 200 bytes) plus, in a batch, per-forward headers
(under 200 bytes each); batches are packed to fit ``max_frame + PEER_FRAME_SLACK``."""


@dataclass(frozen=True, slots=True)
class Limits:
    """Hard bounds applied to every decoded frame.

    The size budget (docs/protocol.md, "Size budget"): ``max_envelope`` is the
    largest envelope body (one ciphertext copy, or one group ciphertext) a node
    accepts; it is defined apart from ``max_frame`` so that every frame that
    carries an envelope (``deliver``, ``forward``, their batches) fits every
    node's and client's limit: ``max_envelope + ENVELOPE_OVERHEAD <= max_frame``
    (checked here), and node-to-node frames may be up to :attr:`max_peer_frame`.

    Attributes:
        max_frame: largest accepted frame from a client, and largest frame a node
            sends to one, bytes (default 1 MiB).
        max_envelope: largest envelope body, bytes (default 256 KiB).
        max_bin: largest single ``bin`` field, bytes.
        max_str: largest single ``str`` field, bytes.
        max_array: most elements of one array.
        max_map: most entries of one map.
        max_copies: most ciphertext copies in one ``send`` (all recipients together).
    """

    max_frame: int = 1 * MiB
    max_envelope: int = DEFAULT_MAX_ENVELOPE
    max_bin: int = 1 * MiB
    max_str: int = 64 * 1024
    max_array: int = 4096
    max_map: int = 64
    max_copies: int = 1024

    def __post_init__(self) -> None:
        if self.max_envelope + ENVELOPE_OVERHEAD > self.max_frame:
            raise ValueError(
                f"max_envelope ({self.max_envelope}) + {ENVELOPE_OVERHEAD} bytes of overhead "
                f"must fit max_frame ({self.max_frame})"
            )

    @property
    def max_peer_frame(self) -> int:
        """Largest node-to-node frame, bytes: ``max_frame + PEER_FRAME_SLACK``."""
        return self.max_frame + PEER_FRAME_SLACK

    def for_peers(self) -> Limits:
        """The limits a node applies to frames from peer nodes (larger frames and bins)."""
        return replace(self, max_frame=self.max_peer_frame,
                       max_bin=max(self.max_bin, self.max_peer_frame))

    @classmethod
    def for_node(cls, max_frame: int, max_envelope: int | None = None) -> Limits:
        """The limits of a node configured with ``max_frame`` (and optionally
        ``max_envelope``; by default 256 KiB, or less when ``max_frame`` is small).

        Raises:
            ValueError: the envelope does not fit the frame with its overhead.
        """
        if max_envelope is None:
            max_envelope = min(DEFAULT_MAX_ENVELOPE, max_frame - ENVELOPE_OVERHEAD)
        return cls(max_frame=max_frame, max_envelope=max_envelope, max_bin=max_frame)


DEFAULT_LIMITS = Limits()


def refuse_ext(code: int, data: bytes) -> Any:
    """msgpack ``ext_hook``: no frame field (nor any other structure of the protocol) is
    an ext type, whatever its length (``max_ext_len=0`` lets a zero-length one through).

    Raises:
        ValueError: always.
    """
    raise ValueError(f"ext type {code} is not accepted")


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
            ext_hook=refuse_ext,  # a zero-length ext passes max_ext_len=0; refuse it here
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
