"""Signed one-time and fallback keys, and fallback-key rotation (issue 10, finding 6).

Every one-time and fallback key a device uploads carries its Ed25519 device-key
signature over :func:`relay.protocol.identity.one_time_key_message` (user id,
device id, key id, key). A claimer checks it against the device's ``ed25519``
in the account-signed device list (:func:`check_claimed`): a key the relay made
up, or one of another device, is refused, so a relay cannot slip its own key
into a session.

The fallback key (handed out when one-time keys run out, or when they are
claimed too fast) is rotated (:func:`needs_rotation`):

* after it was used: a pre-key message that names it arrived
  (:func:`prekey_one_time_key` reads the key a pre-key message was made with;
  the Olm pre-key message layout is ``version (3) || fields`` with field 1, the
  one-time key, as ``0x0A || length || key``), at most once per
  :data:`MIN_ROTATE_INTERVAL`;
* and at least every :data:`FALLBACK_MAX_AGE` (7 days; issue 10 asks for 30 at most).

vodozemac keeps the previous fallback key's private half until the next
rotation (its Python binding has no ``forget_fallback_key``), so the old
private half is dropped at most :data:`FALLBACK_MAX_AGE` after it stopped
being published: the grace period for messages still in flight. A pre-key
message made with a key dropped since fails to decrypt and is recovered by a
retry request (:mod:`cli.features.retry`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from cli.session.crypto import PREKEY, DeviceIdentity
from relay.protocol.frames import ClaimedKey, OneTimeKey
from relay.protocol.identity import Device, one_time_key_message, verify_signature

__all__ = ["FALLBACK_MAX_AGE", "MIN_ROTATE_INTERVAL", "FallbackInfo", "check_claimed",
           "needs_rotation", "prekey_one_time_key", "signed_keys"]

log = logging.getLogger(__name__)

FALLBACK_MAX_AGE = 7 * 24 * 3600.0
"""Seconds a fallback key is published at most (and the previous one's grace period)."""
MIN_ROTATE_INTERVAL = 60.0
"""Seconds between two rotations after use (bounds uploads under a flood of pre-key messages)."""
OLM_VERSION = 3
ONE_TIME_KEY_FIELD = 0x0A  # field 1, length-delimited


@dataclass
class FallbackInfo:
    """What this device knows of its published fallback key.

    Attributes:
        key: the current fallback key's public half (32 bytes; empty: none published).
        created_at: when it was generated (seconds since the epoch).
        used: a pre-key message made with it has arrived since.
    """

    key: bytes = b""
    created_at: float = 0.0
    used: bool = False

    def to_map(self) -> dict:
        """Msgpack-ready form."""
        return {"key": self.key, "created_at": self.created_at, "used": self.used}

    @classmethod
    def from_map(cls, m: dict | None) -> FallbackInfo:
        """Inverse of :meth:`to_map` (``None``: a state saved before rotation existed)."""
        if not m:
            return cls()
        return cls(m["key"], m["created_at"], m["used"])


def needs_rotation(info: FallbackInfo, now: float) -> bool:
    """Whether a new fallback key should be made and uploaded now."""
    if not info.key:
        return True
    age = now - info.created_at
    return age >= FALLBACK_MAX_AGE or (info.used and age >= MIN_ROTATE_INTERVAL)


def signed_keys(identity: DeviceIdentity, user_id: str, device_id: int,
                keys: list[OneTimeKey]) -> list[OneTimeKey]:
    """``keys`` with the device's signature over each (:func:`one_time_key_message`)."""
    return [OneTimeKey(k.key_id, k.key, identity.sign(
        one_time_key_message(user_id, device_id, k.key_id, k.key))) for k in keys]


def check_claimed(user_id: str, device: Device, claimed: ClaimedKey) -> bool:
    """Whether a claimed key carries a valid signature by ``device``'s Ed25519 key.

    A refused key is logged as a warning naming the device (the relay served a key
    the device never signed: a substitution, or a device that predates signing).
    """
    if claimed.signature is not None and verify_signature(
            device.ed25519,
            one_time_key_message(user_id, device.device_id, claimed.key_id, claimed.key),
            claimed.signature):
        return True
    log.warning("refused a %s key for device %d of %s: %s",
                "fallback" if claimed.fallback else "one-time", device.device_id, user_id[:12],
                "not signed" if claimed.signature is None
                else "its signature is not the device's (substituted by the relay?)")
    return False


def prekey_one_time_key(body: bytes) -> bytes | None:
    """The one-time (or fallback) key an Olm pre-key message body (``type || message``)
    was made with, or ``None`` if it is not a well-formed pre-key message."""
    if len(body) < 2 or body[0] != PREKEY or body[1] != OLM_VERSION:
        return None
    i, end = 2, len(body)
    while i < end:
        tag = body[i]
        i += 1
        length = shift = 0
        while True:  # a varint length
            if i >= end or shift > 28:
                return None
            b = body[i]
            i += 1
            length |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                break
        if tag & 0x07 != 2 or i + length > end:
            return None
        if tag == ONE_TIME_KEY_FIELD:
            return body[i:i + length] if length == 32 else None
        i += length
    return None
