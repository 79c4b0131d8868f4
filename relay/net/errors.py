"""Errors of the connection layer (:mod:`relay.net`). Messages are user-facing sentences
naming the URL (``wa-cli`` prints them as they are).

Vocabulary (as in trio: who ended it, and whether the outcome is known)::

    NetError
    +-- ConnectFailed          no connection came up (unreachable, refused, timed out, bad answers)
    |   +-- HandshakeFailed    the other end answered the handshake wrongly (bad frame, node id,
    |                          ring version, size budget, signature)
    +-- Refused                the other end answered a handshake step with ``error`` (``.frame``)
    +-- ConnectionLost         the connection ended (closed, reset, keepalive overdue); ``.sent``
    +-- RequestTimeout         no answer within the request's deadline; the link stays up; ``.sent``
    +-- FrameTooLarge          a frame above the other end's limit: nothing was sent
"""

from __future__ import annotations

from relay.protocol.errors import ErrorCode
from relay.protocol.frames import Error

__all__ = ["ConnectFailed", "ConnectionLost", "FrameTooLarge", "HandshakeFailed", "NetError",
           "Refused", "RequestTimeout"]


class NetError(Exception):
    """Base of every error raised by :mod:`relay.net`."""


class ConnectFailed(NetError):
    """Could not open the connection or complete its handshake (nothing was served).

    Attributes:
        http_status: the HTTP status of a refused WebSocket upgrade (503: the node is
            over its connection limits), else ``None``.
    """

    def __init__(self, message: str, *, http_status: int | None = None) -> None:
        super().__init__(message)
        self.http_status = http_status


class HandshakeFailed(ConnectFailed):
    """The other end answered the handshake with something wrong: another frame type,
    another node id, ring version or size budget than expected, or a signature that
    does not verify."""


class Refused(NetError):
    """The other end answered a handshake step with ``error``.

    Attributes:
        frame: the ``error`` frame (``url`` for ``moved``).
        code: its code (an :class:`~relay.protocol.errors.ErrorCode` value or an unknown string).
    """

    def __init__(self, message: str, frame: Error) -> None:
        super().__init__(message)
        self.frame = frame
        self.code: ErrorCode | str = frame.code


class ConnectionLost(NetError):
    """The connection ended before the answer came (or before the frame could be sent).

    Attributes:
        sent: whether the request had been handed to the socket: if so, the other end
            may have acted on it (the outcome is unknown); if not, it surely did not.
    """

    def __init__(self, message: str, *, sent: bool = False) -> None:
        super().__init__(message)
        self.sent = sent


class RequestTimeout(NetError):
    """No answer within the request's deadline. The request is given up (a late answer
    is dropped) but the connection stays open.

    Attributes:
        sent: as in :class:`ConnectionLost`.
    """

    def __init__(self, message: str, *, sent: bool = False) -> None:
        super().__init__(message)
        self.sent = sent


class FrameTooLarge(NetError):
    """The encoded frame exceeds what the other end accepts; nothing was sent.

    Attributes:
        size, limit: bytes.
    """

    def __init__(self, message: str, *, size: int, limit: int) -> None:
        super().__init__(message)
        self.size = size
        self.limit = limit
