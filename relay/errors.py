"""The node's one base error: a refused request, answered with an ``error`` frame.

Protocol-level problems (:class:`relay.protocol.RemoteProtocolError`) and
storage limits (:class:`storage.StorageFull`, :class:`storage.QueueFull`) are
mapped to it by :func:`relay_error_from`; everything else the node refuses
on purpose raises :class:`RelayError`.
"""

from __future__ import annotations

from relay.protocol import ErrorCode, RemoteProtocolError
from relay.protocol.frames import Error, SignedDeviceList
from storage import QueueFull, StorageFull, StorageUnavailable


class RelayError(Exception):
    """A request the node refuses, with everything the ``error`` frame carries.

    Attributes:
        code: the :class:`ErrorCode` to answer with.
        message: human-readable detail (metadata only, never message bodies).
        url: for ``moved``, the home node's URL.
        user_id: for ``stale_devices`` / ``unknown_user``, the user concerned.
        device_list: for ``stale_devices``, the current signed device list.
    """

    def __init__(
        self, code: ErrorCode, message: str = "", *, url: str | None = None,
        user_id: str | None = None, device_list: SignedDeviceList | None = None,
    ) -> None:
        super().__init__(f"{code.value}: {message}" if message else code.value)
        self.code = code
        self.message = message
        self.url = url
        self.user_id = user_id
        self.device_list = device_list

    def to_frame(self, request_id: int) -> Error:
        """The ``error`` frame answering ``request_id``."""
        return Error(
            id=request_id, code=self.code.value, message=self.message, url=self.url,
            user_id=self.user_id, device_list=self.device_list,
        )

    @classmethod
    def from_frame(cls, frame: Error) -> RelayError:
        """Rebuild the error a peer node answered with (unknown codes become ``internal``)."""
        try:
            code = ErrorCode(frame.code)
        except ValueError:
            code = ErrorCode.INTERNAL
        return cls(code, frame.message, url=frame.url, user_id=frame.user_id,
                   device_list=frame.device_list)


def relay_error_from(exc: Exception) -> RelayError | None:
    """Map a known refusal to a :class:`RelayError`; ``None`` for anything else (a bug)."""
    if isinstance(exc, RelayError):
        return exc
    if isinstance(exc, RemoteProtocolError):
        return RelayError(exc.code, exc.message)
    if isinstance(exc, StorageFull):
        return RelayError(ErrorCode.STORAGE_FULL, "the node's storage is full; nothing was stored")
    if isinstance(exc, StorageUnavailable):
        return RelayError(ErrorCode.STORAGE_UNAVAILABLE,
                          "the node's storage failed; nothing was stored, retry later")
    if isinstance(exc, QueueFull):
        return RelayError(ErrorCode.QUEUE_FULL, "a recipient device's queue is full")
    return None


KNOWN_REFUSALS = (RelayError, RemoteProtocolError, StorageFull, StorageUnavailable, QueueFull)
"""The exception types :func:`relay_error_from` maps (catch these, not ``Exception``)."""


RETRYABLE_CODES = frozenset({
    ErrorCode.STORAGE_FULL.value, ErrorCode.QUEUE_FULL.value, ErrorCode.RATE_LIMITED.value,
    ErrorCode.UNAVAILABLE.value, ErrorCode.INTERNAL.value, ErrorCode.STORAGE_UNAVAILABLE.value,
})
"""Refusal codes that may pass (a node's outbox keeps such an entry and retries it);
any other code is final."""
