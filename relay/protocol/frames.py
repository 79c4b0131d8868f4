"""Frame types of the wa-relay wire protocol, version 2 (see docs/protocol.md).

Every frame is a msgpack map ``{"t": TYPE, "id": REQUEST_ID, ...fields}``.
Requests carry a positive ``id`` chosen by the sender; the answer (a typed
result frame or ``error``) repeats it. Pushes from the node use ``id = 0``.

Each frame is a frozen dataclass. :func:`parse` turns a decoded map into one,
checking every field's type (nested dataclasses, ``list[...]``, ``X | None``);
:func:`to_wire` does the reverse. Unknown extra fields are ignored so that
newer peers can add optional fields. Both use converters compiled once per
class at import (:mod:`relay.protocol._convert`).

This module holds the handshake, key-directory and messaging frames and
re-exports the rest, so import every frame and nested value from here: the
base and nested values (:mod:`._frame_base`), linking (:mod:`._linking_frames`),
media (:mod:`._media_frames`), group (:mod:`._group_frames`) and batched
node-to-node (:mod:`._batch_frames`) frames.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from ._batch_frames import BounceBack, ForwardBatch, Results
from ._convert import FieldError, compile_classes, plain
from ._frame_base import (
    ClaimedKey,
    Copy,
    DeliverItem,
    Envelope,
    Frame,
    GroupRecipient,
    OneTimeKey,
    Recipient,
    SignedDeviceList,
)
from ._group_frames import GroupForward, GroupSend
from ._handoff_frames import HandoffComplete, HandoffDone, HandoffMedia, HandoffPut
from ._linking_frames import (
    LinkComplete,
    LinkData,
    LinkFetch,
    LinkInfo,
    LinkOpen,
    LinkOpened,
    LinkReply,
)
from ._media_frames import MediaChunk, MediaDownload, MediaProgress, MediaStatus, MediaUpload
from .codec import DEFAULT_LIMITS, Limits, encode
from .errors import ErrorCode, RemoteProtocolError

PROTOCOL_VERSION = 2
SUPPORTED_VERSIONS = (2,)

__all__ = [
    "FRAME_TYPES", "PROTOCOL_VERSION", "SUPPORTED_VERSIONS",
    # nested values
    "ClaimedKey", "Copy", "DeliverItem", "Envelope", "GroupRecipient", "OneTimeKey", "Recipient",
    "SignedDeviceList",
    # frames
    "Ack", "Auth", "AuthOk", "BounceBack", "Challenge", "ClaimKeys", "Claimed", "ClusterInfo",
    "Deliver", "GetCluster",
    "Devices", "Error",
    "Forward", "ForwardBatch", "Frame", "GetDevices", "GroupForward", "GroupSend",
    "HandoffComplete", "HandoffDone", "HandoffMedia", "HandoffPut", "Hello", "KeyCount",
    "LinkComplete", "LinkData", "LinkFetch", "LinkInfo", "LinkOpen", "LinkOpened", "LinkReply",
    "MediaChunk",
    "MediaDownload", "MediaProgress", "MediaStatus", "MediaUpload", "Notify", "Ok", "PeerAuth",
    "PeerAuthOk", "Ping", "PutDevices", "Results", "Send", "Sent", "Sync", "Synced", "UploadKeys",
    # functions
    "check_budget", "error_for", "parse", "to_wire",
]


# -- handshake


@dataclass(frozen=True, slots=True)
class Hello(Frame):
    """First frame from a connecting device or peer node. ``role`` is ``client`` or ``peer``."""

    TYPE: ClassVar[str] = "hello"
    versions: list[int]
    role: str
    agent: str = ""


@dataclass(frozen=True, slots=True)
class Challenge(Frame):
    """Node's answer to ``hello``: chosen version, its node id, ring version and a 32-byte
    nonce, plus the node's size budget (``max_frame``, ``max_envelope``, bytes): a client
    refuses to send an envelope above ``max_envelope``; peers refuse to link when their
    budgets differ (docs/protocol.md, "Size budget"). ``window`` is how many requests
    the sender may have in flight on this connection (pipelining; answers come by id).
    ``signature`` is the node key's signature over
    :func:`relay.protocol.cluster.challenge_message` (nonce, node id, ring version,
    channel binding); ``cluster_version`` the version of the signed cluster description
    the node serves (``get_cluster``), if any."""

    TYPE: ClassVar[str] = "challenge"
    version: int
    node_id: str
    ring_version: str
    nonce: bytes
    max_frame: int | None = None
    max_envelope: int | None = None
    window: int | None = None
    signature: bytes | None = None
    cluster_version: int | None = None


@dataclass(frozen=True, slots=True)
class GetCluster(Frame):
    """Ask for the node's signed cluster description (allowed before ``auth``)."""

    TYPE: ClassVar[str] = "get_cluster"


@dataclass(frozen=True, slots=True)
class ClusterInfo(Frame):
    """Answer to ``get_cluster``: a :class:`relay.protocol.cluster.SignedCluster`
    (``body``, 64-byte ``signature``, 32-byte ``cluster_key``)."""

    TYPE: ClassVar[str] = "cluster"
    body: bytes
    signature: bytes
    cluster_key: bytes


@dataclass(frozen=True, slots=True)
class Auth(Frame):
    """Device authentication: Ed25519 device-key signature over
    :func:`relay.protocol.identity.auth_message`."""

    TYPE: ClassVar[str] = "auth"
    user_id: str
    device_id: int
    signature: bytes


@dataclass(frozen=True, slots=True)
class AuthOk(Frame):
    """Authentication accepted; ``otk_count`` is how many one-time keys the node holds for
    the device. ``urls``: every address of this home when several processes serve it
    (a client that loses its connection may reconnect to any of them); absent otherwise.
    ``cluster``: the URLs of every node of the cluster (optional), which a client keeps
    to find its home again if its saved home goes away (docs/protocol.md, "Handoff")."""

    TYPE: ClassVar[str] = "auth_ok"
    otk_count: int
    urls: list[str] | None = None
    cluster: list[str] | None = None


@dataclass(frozen=True, slots=True)
class PeerAuth(Frame):
    """Node-to-node authentication: node-key signature over the challenge plus a
    32-byte ``nonce`` that the accepting node must sign back (mutual auth)."""

    TYPE: ClassVar[str] = "peer_auth"
    node_id: str
    signature: bytes
    nonce: bytes


@dataclass(frozen=True, slots=True)
class PeerAuthOk(Frame):
    """The accepting node's signature over the connecting node's nonce."""

    TYPE: ClassVar[str] = "peer_auth_ok"
    signature: bytes


# -- key directory


@dataclass(frozen=True, slots=True)
class PutDevices(Frame):
    """Publish a signed device list. Needs no session: the account signature is the authority.

    ``invite``: a registration token of the home node (``wa-relay admin invite``), needed
    for a user's first list on a node whose registration policy is ``invite``.
    """

    TYPE: ClassVar[str] = "put_devices"
    device_list: SignedDeviceList
    invite: str | None = None


@dataclass(frozen=True, slots=True)
class GetDevices(Frame):
    """Fetch a user's current signed device list (forwarded to the user's home).

    ``watcher`` is set only node-to-node: the user on whose behalf the forwarding
    node asks, whom the home records as a watcher of ``user_id``'s list (a client's
    value is ignored; the home uses the authenticated user).

    ``keys`` asks the home to say which listed devices hold keys there (``keyed``
    in the answer): a primary confirms that a device it just linked reached its
    home (docs/protocol.md, "Linking a companion device")."""

    TYPE: ClassVar[str] = "get_devices"
    user_id: str
    watcher: str | None = None
    keys: bool | None = None


@dataclass(frozen=True, slots=True)
class Devices(Frame):
    """Answer to ``get_devices``. ``keyed`` (only when asked with ``keys``): the ids
    of the listed devices that uploaded keys to the home (a fallback key or any
    one-time key), ascending. The home's word, unsigned: a hint for the account's
    own primary, never a reason to encrypt to a device."""

    TYPE: ClassVar[str] = "devices"
    device_list: SignedDeviceList
    keyed: list[int] | None = None


@dataclass(frozen=True, slots=True)
class UploadKeys(Frame):
    """Add one-time keys (and optionally replace the fallback key) of the authenticated device."""

    TYPE: ClassVar[str] = "upload_keys"
    one_time_keys: list[OneTimeKey]
    fallback_key: OneTimeKey | None = None


@dataclass(frozen=True, slots=True)
class KeyCount(Frame):
    """Answer to ``upload_keys`` and push ``keys_low`` (id 0): one-time keys left on the node."""

    TYPE: ClassVar[str] = "key_count"
    otk_count: int


@dataclass(frozen=True, slots=True)
class ClaimKeys(Frame):
    """Atomically take one one-time key (else the fallback key) per listed device."""

    TYPE: ClassVar[str] = "claim_keys"
    user_id: str
    device_ids: list[int]


@dataclass(frozen=True, slots=True)
class Claimed(Frame):
    """Answer to ``claim_keys``; devices with neither key are absent."""

    TYPE: ClassVar[str] = "claimed"
    keys: list[ClaimedKey]


# -- messaging


@dataclass(frozen=True, slots=True)
class Send(Frame):
    """Send one message: one copy per device of every recipient (including the
    sender's own other devices, as a recipient entry for the sender's user_id).

    ``ephemeral: true``: pushed only to the recipient devices connected (and syncing)
    at that moment, never stored, queued or put in an outbox (typing indicators);
    answered ``sent {status: "ephemeral"}`` whoever got it."""

    TYPE: ClassVar[str] = "send"
    msg_id: bytes
    recipients: list[Recipient]
    ephemeral: bool | None = None


@dataclass(frozen=True, slots=True)
class Sent(Frame):
    """Answer to ``send``: ``status`` is ``stored`` (durable at every recipient
    home) or ``queued`` (durable in the sender home's outbox)."""

    TYPE: ClassVar[str] = "sent"
    status: str


@dataclass(frozen=True, slots=True)
class Forward(Frame):
    """Node-to-node: store these copies (all homed at the receiving node); with
    ``ephemeral: true``, push them to the connected devices only (see ``send``)."""

    TYPE: ClassVar[str] = "forward"
    msg_id: bytes
    sender_user: str
    sender_device: int
    ts: int
    recipients: list[Recipient]
    ephemeral: bool | None = None


@dataclass(frozen=True, slots=True)
class Sync(Frame):
    """Start delivery of this device's queue; the node then pushes live."""

    TYPE: ClassVar[str] = "sync"


@dataclass(frozen=True, slots=True)
class Deliver(Frame):
    """Push (id 0): one or more queued envelopes of the device, in ``seq`` order
    (packed to fit ``max_frame``)."""

    TYPE: ClassVar[str] = "deliver"
    items: list[DeliverItem]


@dataclass(frozen=True, slots=True)
class Synced(Frame):
    """Push (id 0): the backlog present at ``sync`` time has been delivered."""

    TYPE: ClassVar[str] = "synced"


@dataclass(frozen=True, slots=True)
class Ack(Frame):
    """Cumulative: the device has durably processed everything up to and including
    ``seq``; the node deletes those envelopes (``seq`` above the highest seq delivered
    on this connection is clamped to it). No answer is sent (``id`` may be 0)."""

    TYPE: ClassVar[str] = "ack"
    seq: int


@dataclass(frozen=True, slots=True)
class Ping(Frame):
    """Liveness check; answered with ``ok``."""

    TYPE: ClassVar[str] = "ping"


@dataclass(frozen=True, slots=True)
class Ok(Frame):
    """Generic success answer."""

    TYPE: ClassVar[str] = "ok"


@dataclass(frozen=True, slots=True)
class Error(Frame):
    """Error answer (or push with id 0 before a close).

    Attributes:
        code: an :class:`~relay.protocol.errors.ErrorCode` value.
        message: human-readable detail.
        url: for ``moved``, the home node's WebSocket URL.
        user_id: for ``stale_devices`` / ``unknown_user``, which user.
        device_list: for ``stale_devices``, the current signed list.
        retry_after_ms: for ``rate_limited`` and ``quota_exceeded``, milliseconds
            after which the same request may succeed (a hint for quotas).
        quota: for ``quota_exceeded`` (and ``rate_limited``), which limit refused:
            e.g. ``device_queue_bytes``, ``account_queue_bytes``, ``sender_bytes``,
            ``sender_share``, ``peer_bytes``, ``peer_share``, ``media_account``,
            ``outbox_sender``, ``outbox_total``, ``fanout``, or the rate-limited action.
        refused_users: for a ``send`` / ``group_send`` refused by some recipients'
            homes while the others' homes stored (or queued) it: the user ids whose
            homes did not store it (a partial send; resend with the same ``msg_id``).
    """

    TYPE: ClassVar[str] = "error"
    code: str
    message: str = ""
    url: str | None = None
    user_id: str | None = None
    device_list: SignedDeviceList | None = None
    retry_after_ms: int | None = None
    quota: str | None = None
    refused_users: list[str] | None = None


@dataclass(frozen=True, slots=True)
class Notify(Frame):
    """Node-to-node: queue ``envelope`` for every current device of each of ``user_ids``
    (all homed at the receiving node), deduplicated by ``(envelope.sender_user,
    envelope.msg_id)``. Used for device-list change notices (envelope kind
    ``"device_list"``, body = msgpack ``{body, signature}`` of the signed list)."""

    TYPE: ClassVar[str] = "notify"
    user_ids: list[str]
    envelope: Envelope


FRAME_TYPES: dict[str, type[Frame]] = {
    cls.TYPE: cls
    for cls in (
        Hello, Challenge, Auth, AuthOk, PeerAuth, PeerAuthOk, GetCluster, ClusterInfo,
        PutDevices, GetDevices, Devices, UploadKeys, KeyCount, ClaimKeys, Claimed,
        Send, Sent, Forward, Sync, Deliver, Synced, Ack, Ping, Ok, Error,
        LinkOpen, LinkOpened, LinkFetch, LinkInfo, LinkComplete, LinkData, LinkReply, Notify,
        MediaUpload, MediaStatus, MediaProgress, MediaDownload, MediaChunk,
        GroupSend, GroupForward, ForwardBatch, Results, BounceBack,
        HandoffPut, HandoffMedia, HandoffDone, HandoffComplete,
    )
}

_BATCHES: dict[type[Frame], tuple[type[Frame], ...]] = {
    ForwardBatch: (Forward, GroupForward, Notify, BounceBack),
    Results: (Ok, Error),
}
"""Frames whose ``items`` are whole nested frames, and the item types they allow."""

_READERS, _WRITERS = compile_classes(c for c in FRAME_TYPES.values() if c not in _BATCHES)


def parse(data: dict[str, Any], limits: Limits = DEFAULT_LIMITS) -> Frame:
    """Validate a decoded map and build its frame.

    Raises:
        RemoteProtocolError: ``bad_frame`` for an unknown ``t``, a missing or
            mistyped field, a negative ``id``, a ``msg_id`` that is not 16 bytes;
            ``too_large`` for a ``send``/``forward`` carrying more than
            ``limits.max_copies`` copies, or a ``group_send``/``group_forward``
            listing more recipient devices than that, or an envelope body (a
            copy's ``body``, a group ``body``) above ``limits.max_envelope``.
    """
    try:
        return _parse(data, limits)
    except RecursionError as exc:  # a guard: nothing here recurses along a decoded value
        raise RemoteProtocolError(ErrorCode.BAD_FRAME, "frame nested too deeply") from exc


def _parse(data: dict[str, Any], limits: Limits) -> Frame:
    t = data.get("t")
    cls = FRAME_TYPES.get(t) if isinstance(t, str) else None
    if cls is None:
        # Never a repr of an arbitrary decoded value: it may be nested ~1000
        # levels deep (RecursionError) or hold a megabyte.
        if t is None:
            raise RemoteProtocolError(ErrorCode.BAD_FRAME, "missing field 't' (the frame type)")
        if isinstance(t, str):
            shown = repr(t[:32]) + ("..." if len(t) > 32 else "")
            raise RemoteProtocolError(ErrorCode.BAD_FRAME, f"unknown frame type {shown}")
        raise RemoteProtocolError(
            ErrorCode.BAD_FRAME, f"field 't': expected str, got {type(t).__name__}"
        )
    if cls in _BATCHES:
        return _parse_batch(cls, data, limits)
    try:
        frame = _READERS[cls](data)
    except FieldError as exc:
        if exc.want is None:
            raise RemoteProtocolError(ErrorCode.BAD_FRAME, f"missing field {exc.path!r}") from None
        raise RemoteProtocolError(
            ErrorCode.BAD_FRAME, f"field {exc.path!r}: expected {exc.want}, got {exc.got}"
        ) from None
    if frame.id < 0:
        raise RemoteProtocolError(ErrorCode.BAD_FRAME, "field 'id' must be >= 0")
    if cls is GroupSend or cls is GroupForward:
        n = sum(len(r.device_ids) for r in frame.recipients)
        if n > limits.max_copies:
            raise RemoteProtocolError(
                ErrorCode.TOO_LARGE, f"{n} recipient devices exceed the limit of {limits.max_copies}"
            )
        if len(frame.msg_id) != 16:
            raise RemoteProtocolError(ErrorCode.BAD_FRAME, "msg_id must be 16 bytes")
        _check_envelope(len(frame.body), limits)
    elif cls is Send or cls is Forward:
        n = sum(len(r.copies) for r in frame.recipients)
        if n > limits.max_copies:
            raise RemoteProtocolError(
                ErrorCode.TOO_LARGE, f"{n} copies exceed the limit of {limits.max_copies}"
            )
        if len(frame.msg_id) != 16:
            raise RemoteProtocolError(ErrorCode.BAD_FRAME, "msg_id must be 16 bytes")
        for r in frame.recipients:
            for c in r.copies:
                _check_envelope(len(c.body), limits)
    return frame


def _parse_batch(cls: type[Frame], data: dict[str, Any], limits: Limits) -> Frame:
    rid, items = data.get("id"), data.get("items")
    if type(rid) is not int or rid < 0:
        raise RemoteProtocolError(ErrorCode.BAD_FRAME, "field 'id': expected an int >= 0")
    if not isinstance(items, list):
        raise RemoteProtocolError(ErrorCode.BAD_FRAME, "field 'items': expected array")
    allowed = _BATCHES[cls]
    frames = []
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise RemoteProtocolError(ErrorCode.BAD_FRAME, f"field 'items[{i}]': expected map")
        try:
            frame = _parse(item, limits)
        except RemoteProtocolError as exc:
            raise RemoteProtocolError(exc.code, f"items[{i}]: {exc.message}") from None
        if type(frame) not in allowed:
            raise RemoteProtocolError(
                ErrorCode.BAD_FRAME, f"items[{i}]: a {frame.TYPE!r} cannot be in a {cls.TYPE}")
        frames.append(frame)
    if cls is ForwardBatch:
        queued = data.get("queued")
        if queued is not None and type(queued) is not bool:
            raise RemoteProtocolError(ErrorCode.BAD_FRAME, "field 'queued': expected bool")
        return ForwardBatch(rid, frames, queued)
    return cls(rid, frames)  # type: ignore[call-arg]


def check_budget(frame: Frame, limits: Limits) -> bytes:
    """Encode an outgoing request and check it against the peer's size budget,
    the same checks the receiver makes (so a sender refuses before sending).

    Returns:
        The encoded frame.

    Raises:
        RemoteProtocolError: ``too_large``: the frame is above ``limits.max_frame``,
            an envelope body above ``limits.max_envelope``, or too many copies.
    """
    data = encode(to_wire(frame))
    if len(data) > limits.max_frame:
        raise RemoteProtocolError(
            ErrorCode.TOO_LARGE,
            f"a {frame.TYPE} frame of {len(data)} bytes exceeds the limit of "
            f"{limits.max_frame} bytes")
    if isinstance(frame, Send | Forward | GroupSend | GroupForward):
        _parse(to_wire(frame), limits)
    return data


def _check_envelope(size: int, limits: Limits) -> None:
    if size > limits.max_envelope:
        raise RemoteProtocolError(
            ErrorCode.TOO_LARGE,
            f"an envelope of {size} bytes exceeds the limit of {limits.max_envelope} bytes",
        )


def to_wire(frame: Frame) -> dict[str, Any]:
    """The msgpack-ready map of ``frame`` (``None`` fields are omitted)."""
    if type(frame) in _BATCHES:
        out = {"id": frame.id, "items": [to_wire(f) for f in frame.items]}  # type: ignore[attr-defined]
        if isinstance(frame, ForwardBatch) and frame.queued is not None:
            out["queued"] = frame.queued
        out["t"] = frame.TYPE
        return out
    writer = _WRITERS.get(type(frame))
    out = writer(frame) if writer is not None else plain(frame)
    out["t"] = frame.TYPE
    return out


def error_for(request_id: int, exc: RemoteProtocolError) -> Error:
    """The ``error`` frame answering a request that raised ``exc``."""
    return Error(id=request_id, code=exc.code.value, message=exc.message)
