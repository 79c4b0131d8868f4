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
        retry_after_ms: for ``rate_limited`` / ``quota_exceeded``, when to retry (ms).
        quota: for ``quota_exceeded`` / ``rate_limited``, which limit refused.
    """

    def __init__(
        self, code: ErrorCode, message: str = "", *, url: str | None = None,
        user_id: str | None = None, device_list: SignedDeviceList | None = None,
        retry_after_ms: int | None = None, quota: str | None = None,
    ) -> None:
        super().__init__(f"{code.value}: {message}" if message else code.value)
        self.code = code
        self.message = message
        self.url = url
        self.user_id = user_id
        self.device_list = device_list
        self.retry_after_ms = retry_after_ms
        self.quota = quota

    def to_frame(self, request_id: int) -> Error:
        """The ``error`` frame answering ``request_id``."""
        return Error(
            id=request_id, code=self.code.value, message=self.message, url=self.url,
            user_id=self.user_id, device_list=self.device_list,
            retry_after_ms=self.retry_after_ms, quota=self.quota,
        )

    @classmethod
    def from_frame(cls, frame: Error) -> RelayError:
        """Rebuild the error a peer node answered with (unknown codes become ``internal``)."""
        try:
            code = ErrorCode(frame.code)
        except ValueError:
            code = ErrorCode.INTERNAL
        return cls(code, frame.message, url=frame.url, user_id=frame.user_id,
                   device_list=frame.device_list, retry_after_ms=frame.retry_after_ms,
                   quota=frame.quota)


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
        if exc.quota == "queue_len":
            return RelayError(ErrorCode.QUEUE_FULL, "a recipient device's queue is full")
        name = quota_name(exc.quota, exc.tag)
        return RelayError(ErrorCode.QUOTA_EXCEEDED, f"quota {name} exceeded: {exc}", quota=name)
    return None


SENDER_TAG = "u:"
"""Prefix of the storage charge tag of a sending account (``u:<user_id>``)."""
PEER_TAG = "n:"
"""Prefix of the storage charge tag of a forwarding peer node (``n:<node_id>``)."""
STRANGERS_TAG = "x:"
"""Prefix of the storage charge tag of all senders a recipient never wrote to."""
_QUOTA_NAMES = {"device_bytes": "device_queue_bytes", "account_bytes": "account_queue_bytes"}


def quota_name(quota: str, tag: str | None) -> str:
    """The ``quota`` field of a ``quota_exceeded`` refusal for a storage
    :class:`~storage.QueueFull` (``quota``, ``tag``): ``device_queue_bytes``,
    ``account_queue_bytes``, ``sender_bytes``, ``sender_share``, ``peer_bytes``,
    ``peer_share``, ``strangers_share``."""
    if quota in _QUOTA_NAMES:
        return _QUOTA_NAMES[quota]
    who = "sender"
    if tag is not None and tag.startswith(PEER_TAG):
        who = "peer"
    elif tag is not None and tag.startswith(STRANGERS_TAG):
        who = "strangers"
    return f"{who}_share" if quota == "share_bytes" else f"{who}_bytes"


KNOWN_REFUSALS = (RelayError, RemoteProtocolError, StorageFull, StorageUnavailable, QueueFull)
"""The exception types :func:`relay_error_from` maps (catch these, not ``Exception``)."""


RETRYABLE_CODES = frozenset({
    ErrorCode.STORAGE_FULL.value, ErrorCode.QUEUE_FULL.value, ErrorCode.RATE_LIMITED.value,
    ErrorCode.UNAVAILABLE.value, ErrorCode.INTERNAL.value, ErrorCode.STORAGE_UNAVAILABLE.value,
    ErrorCode.QUOTA_EXCEEDED.value,
})
"""Refusal codes that may pass (a node's outbox keeps such an entry and retries it);
any other code is final."""
