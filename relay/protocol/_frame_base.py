"""Base and nested value types of the wire protocol's frames (see :mod:`relay.protocol.frames`).

The nested values are frozen dataclasses carried inside frames (device lists,
keys, copies, envelopes, group recipients); :class:`Frame` is the base of every
frame. Re-exported by :mod:`relay.protocol.frames`, which is where to import them from.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

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
    """A Curve25519 one-time or fallback key: ``key_id`` (vodozemac's id) and 32 raw bytes;
    ``signature``: the device's Ed25519 signature over
    :func:`relay.protocol.identity.one_time_key_message` (claimers require it)."""

    key_id: str
    key: bytes
    signature: bytes | None = None


@dataclass(frozen=True, slots=True)
class ClaimedKey:
    """A key handed out by ``claim_keys`` for one device; ``fallback`` if no one-time key was
    left (or the device's one-time keys are being claimed too fast); ``signature`` as
    uploaded (:class:`OneTimeKey`)."""

    device_id: int
    key_id: str
    key: bytes
    fallback: bool
    signature: bytes | None = None


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


@dataclass(frozen=True, slots=True)
class DeliverItem:
    """One queued envelope in a ``deliver`` frame: its per-device ``seq`` and the envelope."""

    seq: int
    envelope: Envelope


# -- groups


@dataclass(frozen=True, slots=True)
class GroupRecipient:
    """One member of a group send: the devices of ``user_id`` (device-list
    ``devices_version``) that get the single ciphertext."""

    user_id: str
    devices_version: int
    device_ids: list[int]


# ----------------------------------------------------------------------- frames


@dataclass(frozen=True, slots=True)
class Frame:
    """Base of all frames. ``id`` is the request id (0 for pushes)."""

    TYPE: ClassVar[str] = ""
    id: int

