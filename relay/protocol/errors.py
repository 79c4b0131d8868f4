"""Error vocabulary of the wa-relay wire protocol.

Split as in h11/wsproto: :class:`RemoteProtocolError` means the *peer*
misbehaved (and carries the error code to answer with), while
:class:`LocalProtocolError` means *we* misused the API.
"""

from __future__ import annotations

import enum


class ErrorCode(enum.StrEnum):
    """Error codes carried in ``error`` frames (field ``code``).

    Clients must treat unknown codes like ``internal``.
    """

    BAD_FRAME = "bad_frame"  # undecodable msgpack, wrong types, unknown frame type
    BAD_REQUEST = "bad_request"  # well-formed but semantically invalid (duplicate key id, ...)
    UNSUPPORTED_VERSION = "unsupported_version"  # no protocol version in common
    UNAUTHORIZED = "unauthorized"  # missing/invalid authentication, bad signature
    MOVED = "moved"  # this node is not the user's home; field ``url`` names it
    STALE_DEVICES = "stale_devices"  # copies do not match the device list; ``device_list`` attached
    STALE_VERSION = "stale_version"  # a device list whose version does not grow
    UNKNOWN_USER = "unknown_user"  # no device list published for this user_id
    UNKNOWN_DEVICE = "unknown_device"  # device_id not in the user's device list
    QUEUE_FULL = "queue_full"  # the recipient device's queue is at its bound
    STORAGE_FULL = "storage_full"  # the node's disk / LMDB map is full; nothing was stored
    STORAGE_UNAVAILABLE = "storage_unavailable"  # the node's storage failed (EIO, lost DB); retry
    TOO_LARGE = "too_large"  # frame, field or copy count above the negotiated limit
    RATE_LIMITED = "rate_limited"  # slow down; ``retry_after_ms`` says when to retry
    QUOTA_EXCEEDED = "quota_exceeded"  # a byte quota is used up; ``quota`` names it
    NOT_FOUND = "not_found"  # unknown, used or expired linking mailbox (or other named object)
    ALREADY_USED = "already_used"  # a linking mailbox that served an approval already (single use)
    UNAVAILABLE = "unavailable"  # a peer node needed for the answer is unreachable (read paths)
    INTERNAL = "internal"  # bug or unexpected failure on the node


class CloseCode(enum.IntEnum):
    """WebSocket close codes (RFC 6455 section 7.4.1) used by the node."""

    NORMAL = 1000
    GOING_AWAY = 1001
    PROTOCOL_ERROR = 1002
    UNSUPPORTED_DATA = 1003
    POLICY_VIOLATION = 1008
    MESSAGE_TOO_BIG = 1009
    INTERNAL_ERROR = 1011


class ProtocolError(Exception):
    """Base of every error raised by :mod:`relay.protocol`.

    Attributes:
        code: the :class:`ErrorCode` to answer with.
        message: human-readable detail (never contains message plaintext).
    """

    def __init__(self, code: ErrorCode, message: str = "") -> None:
        super().__init__(f"{code.value}: {message}" if message else code.value)
        self.code = code
        self.message = message


class RemoteProtocolError(ProtocolError):
    """The peer sent something invalid. Answer with an ``error`` frame of :attr:`code`.

    Attributes:
        close_code: if not ``None``, the connection cannot continue and must be
            closed with this WebSocket close code after (or instead of) the error frame.
    """

    def __init__(
        self, code: ErrorCode, message: str = "", *, close_code: CloseCode | None = None
    ) -> None:
        super().__init__(code, message)
        self.close_code = close_code


class LocalProtocolError(ProtocolError):
    """We tried to send something the protocol does not allow (a bug on our side)."""

    def __init__(self, message: str) -> None:
        super().__init__(ErrorCode.INTERNAL, message)
