"""Frame types of the wa-relay wire protocol, version 1 (see docs/protocol.md).

Every frame is a msgpack map ``{"t": TYPE, "id": REQUEST_ID, ...fields}``.
Requests carry a positive ``id`` chosen by the sender; the answer (a typed
result frame or ``error``) repeats it. Pushes from the node use ``id = 0``.

Each frame is a frozen dataclass. :func:`parse` turns a decoded map into one,
checking every field's type (nested dataclasses, ``list[...]``, ``X | None``);
:func:`to_wire` does the reverse. Unknown extra fields are ignored so that
newer peers can add optional fields.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass
from typing import Any, ClassVar

from .codec import DEFAULT_LIMITS, Limits
from .errors import ErrorCode, LocalProtocolError, RemoteProtocolError

PROTOCOL_VERSION = 1
SUPPORTED_VERSIONS = (1,)


# ----------------------------------------------------------------- nested values


@dataclass(frozen=True, slots=True)
class SignedDeviceList:
    """An account-signed device list (see :mod:`relay.protocol.identity`).

    Attributes:
        body: msgpack of ``{user_id, version, devices, issued_at}``.
        signature: 64-byte Ed25519 signature by the account key over
            ``DEVICE_LIST_CONTEXT + body``.
    """

    body: bytes
    signature: bytes


@dataclass(frozen=True, slots=True)
class OneTimeKey:
    """A Curve25519 one-time or fallback key: ``key_id`` (vodozemac's id) and 32 raw bytes."""

    key_id: str
    key: bytes


@dataclass(frozen=True, slots=True)
class ClaimedKey:
    """A key handed out by ``claim_keys`` for one device; ``fallback`` if no one-time key was left."""

    device_id: int
    key_id: str
    key: bytes
    fallback: bool


@dataclass(frozen=True, slots=True)
class Copy:
    """One ciphertext for one recipient device (opaque to the relay)."""

    device_id: int
    body: bytes


@dataclass(frozen=True, slots=True)
class Recipient:
    """All copies for one user, encrypted against device-list ``devices_version``."""

    user_id: str
    devices_version: int
    copies: list[Copy]


@dataclass(frozen=True, slots=True)
class Envelope:
    """What a device's queue holds and what ``deliver`` carries.

    Attributes:
        msg_id: 16 random bytes chosen by the sender; clients dedupe on it.
        sender_user: user_id of the sender (authenticated by its home node).
        sender_device: device_id of the sending device.
        ts: time the sender's home accepted it, milliseconds since the Unix epoch.
        kind: ``"olm"`` (body is an Olm message), ``"bounce"`` (body is a
            msgpack ``{"code", "message", "user_id"}`` explaining why an outbox
            entry for ``msg_id`` was finally rejected), or ``"device_list"``
            (body is msgpack ``{"body", "signature"}``: ``sender_user``'s new
            signed device list, sent by its home to the devices of users who
            fetched it; clients verify it like any list), or ``"group"``
            (body is one Megolm ciphertext shared by every member device).
        body: opaque ciphertext bytes.
    """

    msg_id: bytes
    sender_user: str
    sender_device: int
    ts: int
    kind: str
    body: bytes


# ----------------------------------------------------------------------- frames


@dataclass(frozen=True, slots=True)
class Frame:
    """Base of all frames. ``id`` is the request id (0 for pushes)."""

    TYPE: ClassVar[str] = ""
    id: int


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
    """Node's answer to ``hello``: chosen version, its node id, ring version and a 32-byte nonce."""

    TYPE: ClassVar[str] = "challenge"
    version: int
    node_id: str
    ring_version: str
    nonce: bytes


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
    """Authentication accepted; ``otk_count`` is how many one-time keys the node holds for the device."""

    TYPE: ClassVar[str] = "auth_ok"
    otk_count: int


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
    """Publish a signed device list. Needs no session: the account signature is the authority."""

    TYPE: ClassVar[str] = "put_devices"
    device_list: SignedDeviceList


@dataclass(frozen=True, slots=True)
class GetDevices(Frame):
    """Fetch a user's current signed device list (forwarded to the user's home).

    ``watcher`` is set only node-to-node: the user on whose behalf the forwarding
    node asks, whom the home records as a watcher of ``user_id``'s list (a client's
    value is ignored; the home uses the authenticated user)."""

    TYPE: ClassVar[str] = "get_devices"
    user_id: str
    watcher: str | None = None


@dataclass(frozen=True, slots=True)
class Devices(Frame):
    """Answer to ``get_devices``."""

    TYPE: ClassVar[str] = "devices"
    device_list: SignedDeviceList


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
    sender's own other devices, as a recipient entry for the sender's user_id)."""

    TYPE: ClassVar[str] = "send"
    msg_id: bytes
    recipients: list[Recipient]


@dataclass(frozen=True, slots=True)
class Sent(Frame):
    """Answer to ``send``: ``status`` is ``stored`` (durable at every recipient
    home) or ``queued`` (durable in the sender home's outbox)."""

    TYPE: ClassVar[str] = "sent"
    status: str


@dataclass(frozen=True, slots=True)
class Forward(Frame):
    """Node-to-node: store these copies (all homed at the receiving node)."""

    TYPE: ClassVar[str] = "forward"
    msg_id: bytes
    sender_user: str
    sender_device: int
    ts: int
    recipients: list[Recipient]


@dataclass(frozen=True, slots=True)
class Sync(Frame):
    """Start delivery of this device's queue; the node then pushes live."""

    TYPE: ClassVar[str] = "sync"


@dataclass(frozen=True, slots=True)
class Deliver(Frame):
    """Push (id 0): one queued envelope with its per-device sequence number."""

    TYPE: ClassVar[str] = "deliver"
    seq: int
    envelope: Envelope


@dataclass(frozen=True, slots=True)
class Synced(Frame):
    """Push (id 0): the backlog present at ``sync`` time has been delivered."""

    TYPE: ClassVar[str] = "synced"


@dataclass(frozen=True, slots=True)
class Ack(Frame):
    """The device has durably processed everything up to and including ``seq``.
    No answer is sent (``id`` may be 0)."""

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
    """

    TYPE: ClassVar[str] = "error"
    code: str
    message: str = ""
    url: str | None = None
    user_id: str | None = None
    device_list: SignedDeviceList | None = None


# -- linking a companion device (DESIGN.md "Linking"; see docs/protocol.md)


@dataclass(frozen=True, slots=True)
class LinkOpen(Frame):
    """A new device opens a one-off provisioning mailbox (allowed before ``auth``).

    ``device_info`` is msgpack ``{ed25519, curve25519, ephemeral, name}`` (32-byte keys;
    ``ephemeral`` is an X25519 key for sealing the answer). The linking code commits
    to it by hash, so the relay cannot swap it. The node keeps the mailbox in memory
    while this connection stays open, at most ``expires_in`` seconds.
    """

    TYPE: ClassVar[str] = "link_open"
    device_info: bytes


@dataclass(frozen=True, slots=True)
class LinkOpened(Frame):
    """Answer to ``link_open``: the mailbox id (16 bytes), its node, and seconds until it expires."""

    TYPE: ClassVar[str] = "link_opened"
    mailbox_id: bytes
    node_id: str
    expires_in: int


@dataclass(frozen=True, slots=True)
class LinkFetch(Frame):
    """The primary (authenticated) reads a mailbox's ``device_info``; forwarded to ``node_id``."""

    TYPE: ClassVar[str] = "link_fetch"
    node_id: str
    mailbox_id: bytes


@dataclass(frozen=True, slots=True)
class LinkInfo(Frame):
    """Answer to ``link_fetch``."""

    TYPE: ClassVar[str] = "link_info"
    device_info: bytes


@dataclass(frozen=True, slots=True)
class LinkComplete(Frame):
    """The primary posts the sealed account material; the mailbox node pushes it
    as ``link_data`` to the waiting device and closes the mailbox (single use).
    Answer ``ok``, or ``not_found`` for an unknown, used or expired mailbox."""

    TYPE: ClassVar[str] = "link_complete"
    node_id: str
    mailbox_id: bytes
    body: bytes


@dataclass(frozen=True, slots=True)
class LinkData(Frame):
    """Push (id 0) to the new device: sealed (X25519 sealed box) account material."""

    TYPE: ClassVar[str] = "link_data"
    body: bytes


@dataclass(frozen=True, slots=True)
class Notify(Frame):
    """Node-to-node: queue ``envelope`` for every current device of each of ``user_ids``
    (all homed at the receiving node), deduplicated by ``(envelope.sender_user,
    envelope.msg_id)``. Used for device-list change notices (envelope kind
    ``"device_list"``, body = msgpack ``{body, signature}`` of the signed list)."""

    TYPE: ClassVar[str] = "notify"
    user_ids: list[str]
    envelope: Envelope


# -- media (DESIGN.md "Groups and media"; encrypted on the client, opaque here)


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


# -- groups: one ciphertext fanned out by the relays


@dataclass(frozen=True, slots=True)
class GroupRecipient:
    """One member of a group send: the devices of ``user_id`` (device-list
    ``devices_version``) that get the single ciphertext."""

    user_id: str
    devices_version: int
    device_ids: list[int]


@dataclass(frozen=True, slots=True)
class GroupSend(Frame):
    """A sender-key (Megolm) group message: one ``body`` for every listed device.
    The sender's home splits the recipients by home node (``group_forward``);
    each home checks each member's device ids against its list (``stale_devices``)
    and queues the body for every device. Answered like ``send`` (``sent``)."""

    TYPE: ClassVar[str] = "group_send"
    msg_id: bytes
    body: bytes
    recipients: list[GroupRecipient]


@dataclass(frozen=True, slots=True)
class GroupForward(Frame):
    """Node-to-node part of a ``group_send`` for the users homed at the receiving node."""

    TYPE: ClassVar[str] = "group_forward"
    msg_id: bytes
    sender_user: str
    sender_device: int
    ts: int
    body: bytes
    recipients: list[GroupRecipient]


FRAME_TYPES: dict[str, type[Frame]] = {
    cls.TYPE: cls
    for cls in (
        Hello, Challenge, Auth, AuthOk, PeerAuth, PeerAuthOk,
        PutDevices, GetDevices, Devices, UploadKeys, KeyCount, ClaimKeys, Claimed,
        Send, Sent, Forward, Sync, Deliver, Synced, Ack, Ping, Ok, Error,
        LinkOpen, LinkOpened, LinkFetch, LinkInfo, LinkComplete, LinkData, Notify,
        MediaUpload, MediaStatus, MediaProgress, MediaDownload, MediaChunk,
        GroupSend, GroupForward,
    )
}


# ------------------------------------------------------------------ conversion

_HINTS: dict[type, dict[str, Any]] = {}


def _hints(cls: type) -> dict[str, Any]:
    hints = _HINTS.get(cls)
    if hints is None:
        hints = typing.get_type_hints(cls)
        _HINTS[cls] = hints
    return hints


def _bad(path: str, want: str, got: object) -> RemoteProtocolError:
    return RemoteProtocolError(
        ErrorCode.BAD_FRAME, f"field {path!r}: expected {want}, got {type(got).__name__}"
    )


def _convert(value: Any, tp: Any, path: str) -> Any:
    origin = typing.get_origin(tp)
    if origin is types.UnionType or origin is typing.Union:
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _convert(value, inner, path)
    if origin is list:
        if not isinstance(value, list):
            raise _bad(path, "array", value)
        (inner,) = typing.get_args(tp)
        return [_convert(v, inner, f"{path}[{i}]") for i, v in enumerate(value)]
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise _bad(path, "map", value)
        return _from_map(tp, value, path)
    if tp is int:
        if type(value) is not int:
            raise _bad(path, "int", value)
        return value
    if tp is bool:
        if type(value) is not bool:
            raise _bad(path, "bool", value)
        return value
    if tp is str:
        if not isinstance(value, str):
            raise _bad(path, "str", value)
        return value
    if tp is bytes:
        if not isinstance(value, bytes):
            raise _bad(path, "bin", value)
        return value
    raise LocalProtocolError(f"unsupported field type {tp!r}")  # pragma: no cover


def _from_map(cls: type, data: dict[str, Any], path: str) -> Any:
    kwargs = {}
    hints = _hints(cls)
    for f in dataclasses.fields(cls):
        sub = f"{path}.{f.name}" if path else f.name
        if f.name in data:
            kwargs[f.name] = _convert(data[f.name], hints[f.name], sub)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise RemoteProtocolError(ErrorCode.BAD_FRAME, f"missing field {sub!r}")
    return cls(**kwargs)


def parse(data: dict[str, Any], limits: Limits = DEFAULT_LIMITS) -> Frame:
    """Validate a decoded map and build its frame.

    Raises:
        RemoteProtocolError: ``bad_frame`` for an unknown ``t``, a missing or
            mistyped field, a negative ``id``; ``too_large`` for a ``send`` or
            ``forward`` carrying more than ``limits.max_copies`` copies.
    """
    t = data.get("t")
    cls = FRAME_TYPES.get(t) if isinstance(t, str) else None
    if cls is None:
        raise RemoteProtocolError(ErrorCode.BAD_FRAME, f"unknown frame type {t!r}")
    frame = _from_map(cls, data, "")
    if frame.id < 0:
        raise RemoteProtocolError(ErrorCode.BAD_FRAME, "field 'id' must be >= 0")
    if isinstance(frame, GroupSend | GroupForward):
        n = sum(len(r.device_ids) for r in frame.recipients)
        if n > limits.max_copies:
            raise RemoteProtocolError(
                ErrorCode.TOO_LARGE, f"{n} recipient devices exceed the limit of {limits.max_copies}"
            )
        if len(frame.msg_id) != 16:
            raise RemoteProtocolError(ErrorCode.BAD_FRAME, "msg_id must be 16 bytes")
    if isinstance(frame, Send | Forward):
        n = sum(len(r.copies) for r in frame.recipients)
        if n > limits.max_copies:
            raise RemoteProtocolError(
                ErrorCode.TOO_LARGE, f"{n} copies exceed the limit of {limits.max_copies}"
            )
        if len(frame.msg_id) != 16:
            raise RemoteProtocolError(ErrorCode.BAD_FRAME, "msg_id must be 16 bytes")
    return frame


def _to_plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value):
        return {
            f.name: _to_plain(getattr(value, f.name))
            for f in dataclasses.fields(value)
            if getattr(value, f.name) is not None
        }
    if isinstance(value, list):
        return [_to_plain(v) for v in value]
    return value


def to_wire(frame: Frame) -> dict[str, Any]:
    """The msgpack-ready map of ``frame`` (``None`` fields are omitted)."""
    out = _to_plain(frame)
    out["t"] = frame.TYPE
    return out


def error_for(request_id: int, exc: RemoteProtocolError) -> Error:
    """The ``error`` frame answering a request that raised ``exc``."""
    return Error(id=request_id, code=exc.code.value, message=exc.message)

