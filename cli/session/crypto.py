"""Thin wrappers over vodozemac (Olm) and pynacl (account keys); no primitive is hand-rolled.

Keys on the wire and in device lists are raw bytes: 32-byte Ed25519 and
Curve25519 public keys, 64-byte Ed25519 signatures. vodozemac speaks unpadded
base64; :func:`b64decode` bridges the two.

Olm message body (what a ``Copy.body`` / ``Envelope.body`` of kind ``olm`` holds)::

    body = bytes([message_type]) + ciphertext     # type 0 = pre-key, 1 = normal

Sessions follow Olm: the outbound side creates a session from the recipient
device's identity key (from the account-signed device list) and a claimed
one-time (or fallback) key, and sends pre-key messages until it hears back;
the inbound side first tries its existing sessions with that sender device
(``session_matches``) and only then creates a new inbound session, which
consumes the one-time key. vodozemac removes a one-time key only when the
inbound session was created *and* the message decrypted, and it never advances
a ratchet on a failed decryption; callers persist the account only after a
successful decryption, so a forged or corrupted message cannot burn a key.

Known limit (protocol v1): one-time keys are not signed by the device key, so
a relay could substitute a claimed one-time key with its own. It still cannot
decrypt (Olm's triple Diffie-Hellman includes the recipient's identity key,
taken from the account-signed device list), but the first messages of that
session lose forward secrecy, as with an exhausted key pool.
"""

from __future__ import annotations

import base64
import hashlib
import time
from dataclasses import dataclass

import nacl.signing
import vodozemac

from relay.protocol.frames import OneTimeKey, SignedDeviceList
from relay.protocol.identity import (
    Device,
    DeviceList,
    key_from_user_id,
    sign_device_list,
    user_id_from_key,
)

ONE_TIME_KEYS_TARGET = 100
"""How many one-time keys a device keeps published on its home node."""
ONE_TIME_KEYS_LOW = 50
"""Top up when the home node reports fewer than this many."""

PREKEY = 0
NORMAL = 1

FINGERPRINT_VERSION = 0
FINGERPRINT_ITERATIONS = 5200


class CryptoError(Exception):
    """Base error of :mod:`cli.crypto`."""


class DecryptError(CryptoError):
    """A message could not be decrypted (corrupt, forged, unknown session or key)."""


def b64decode(text: str) -> bytes:
    """Decode vodozemac's unpadded standard base64."""
    return base64.b64decode(text + "=" * (-len(text) % 4))


class DeviceIdentity:
    """One device's vodozemac ``Account``: Curve25519 identity key, Ed25519 device key,
    one-time keys and a fallback key. Private keys never leave this object except
    inside an encrypted pickle.
    """

    def __init__(self, account: vodozemac.Account | None = None) -> None:
        self._account = account if account is not None else vodozemac.Account()
        self._pickled: tuple[bytes, str] | None = None  # (key, pickle) until the next change

    @classmethod
    def from_pickle(cls, pickle: str, key: bytes) -> DeviceIdentity:
        """Restore from :meth:`pickle` output; ``key`` is the 32-byte pickle key.

        Raises:
            CryptoError: wrong key or corrupt pickle.
        """
        try:
            return cls(vodozemac.Account.from_pickle(pickle, key))
        except ValueError as exc:
            raise CryptoError(f"cannot restore the device account: {exc}") from exc

    def pickle(self, key: bytes) -> str:
        """The account encrypted under the 32-byte ``key`` (vodozemac pickle).

        Kept until a method that changes the account is called (the state is saved
        before every send; the account changes far less often)."""
        if self._pickled is None or self._pickled[0] != key:
            self._pickled = (key, self._account.pickle(key))
        return self._pickled[1]

    @property
    def ed25519(self) -> bytes:
        """32-byte Ed25519 device public key."""
        return b64decode(self._account.ed25519_key.to_base64())

    @property
    def curve25519(self) -> bytes:
        """32-byte Curve25519 device identity key."""
        return self._account.curve25519_key.to_bytes()

    def sign(self, message: bytes) -> bytes:
        """64-byte Ed25519 signature of ``message`` by the device key (verifiable by pynacl)."""
        return b64decode(self._account.sign(message).to_base64())

    def generate_one_time_keys(self, count: int) -> None:
        """Create ``count`` new (unpublished) one-time keys."""
        if count > 0:
            self._pickled = None
            self._account.generate_one_time_keys(count)

    def generate_fallback_key(self) -> None:
        """Create a new (unpublished) fallback key; the previous one stays usable for a while."""
        self._pickled = None
        self._account.generate_fallback_key()

    def unpublished_one_time_keys(self) -> list[OneTimeKey]:
        """One-time keys not yet marked published, as wire ``OneTimeKey`` (key_id, 32 bytes)."""
        return [
            OneTimeKey(key_id=kid, key=k.to_bytes()) for kid, k in self._account.one_time_keys.items()
        ]

    def unpublished_fallback_key(self) -> OneTimeKey | None:
        """The fallback key if it has not been published yet, else ``None``."""
        for kid, k in self._account.fallback_key.items():
            return OneTimeKey(key_id=kid, key=k.to_bytes())
        return None

    def mark_keys_as_published(self) -> None:
        """Forget the public halves of uploaded keys (the private halves stay for inbound sessions)."""
        self._pickled = None
        self._account.mark_keys_as_published()

    def create_outbound_session(self, identity_key: bytes, one_time_key: bytes) -> vodozemac.Session:
        """Start an Olm session to a device from its identity key and a claimed key.

        Raises:
            CryptoError: a key is not 32 valid bytes.
        """
        try:
            return self._account.create_outbound_session(
                vodozemac.Curve25519PublicKey.from_bytes(identity_key),
                vodozemac.Curve25519PublicKey.from_bytes(one_time_key),
            )
        except ValueError as exc:
            raise CryptoError(f"cannot create an Olm session: {exc}") from exc

    def create_inbound_session(
        self, identity_key: bytes, message: vodozemac.PreKeyMessage
    ) -> tuple[vodozemac.Session, bytes]:
        """Create a session from a pre-key message; consumes its one-time key on success only.

        Raises:
            DecryptError: the message does not decrypt (nothing was consumed).
        """
        self._pickled = None
        try:
            return self._account.create_inbound_session(
                vodozemac.Curve25519PublicKey.from_bytes(identity_key), message
            )
        except ValueError as exc:
            raise DecryptError(f"cannot create an inbound Olm session: {exc}") from exc


def encrypt(session: vodozemac.Session, plaintext: bytes) -> bytes:
    """Encrypt with an Olm session; returns the wire body ``type byte || ciphertext``."""
    msg_type, ciphertext = session.encrypt(plaintext).to_parts()
    return bytes([msg_type]) + ciphertext


def _parse_body(body: bytes) -> vodozemac.AnyOlmMessage:
    if len(body) < 2 or body[0] not in (PREKEY, NORMAL):
        raise DecryptError("not an Olm message body")
    try:
        return vodozemac.AnyOlmMessage.from_parts(body[0], body[1:])
    except ValueError as exc:
        raise DecryptError(f"malformed Olm message: {exc}") from exc


def decrypt(
    identity: DeviceIdentity,
    sessions: list[vodozemac.Session],
    sender_identity_key: bytes,
    body: bytes,
) -> tuple[bytes, vodozemac.Session, bool]:
    """Decrypt an Olm body from one sender device.

    Args:
        identity: our device account (used only for a new inbound session).
        sessions: existing sessions with that sender device, most recent first.
        sender_identity_key: the sender device's 32-byte Curve25519 key from its
            account-signed device list.
        body: ``type byte || ciphertext``.

    Returns:
        ``(plaintext, session, is_new)``; ``is_new`` means the caller must store
        the session (it was created from a pre-key message).

    Raises:
        DecryptError: no existing session decrypts it and (for a pre-key message)
            no new session can be created. Neither the account nor any session changed.
    """
    message = _parse_body(body)
    if body[0] == PREKEY:
        try:
            prekey = message.to_pre_key()
        except ValueError as exc:
            raise DecryptError(f"malformed pre-key message: {exc}") from exc
        for session in sessions:
            if session.session_matches(prekey):
                try:
                    return session.decrypt(message), session, False
                except ValueError as exc:
                    raise DecryptError(f"pre-key message for a known session: {exc}") from exc
        session, plaintext = identity.create_inbound_session(sender_identity_key, prekey)
        return plaintext, session, True
    errors = []
    for session in sessions:
        try:
            return session.decrypt(message), session, False
        except ValueError as exc:
            errors.append(str(exc))
    raise DecryptError(
        "no session with this device decrypts the message"
        + (f" ({'; '.join(errors)})" if errors else " (no session)")
    )


def session_pickle(session: vodozemac.Session, key: bytes) -> str:
    """Encrypted pickle of an Olm session under the 32-byte ``key``."""
    return session.pickle(key)


def session_from_pickle(pickle: str, key: bytes) -> vodozemac.Session:
    """Inverse of :func:`session_pickle`.

    Raises:
        CryptoError: wrong key or corrupt pickle.
    """
    try:
        return vodozemac.Session.from_pickle(pickle, key)
    except ValueError as exc:
        raise CryptoError(f"cannot restore an Olm session: {exc}") from exc


# ------------------------------------------------------------------ account keys


def new_account_key() -> nacl.signing.SigningKey:
    """A fresh Ed25519 account key (pynacl)."""
    return nacl.signing.SigningKey.generate()


def account_user_id(account_key: nacl.signing.SigningKey) -> str:
    """The self-certifying user_id of an account key."""
    return user_id_from_key(bytes(account_key.verify_key))


@dataclass(frozen=True, slots=True)
class DeviceEntry:
    """Input for :func:`make_device_list`: one device's public keys and label."""

    device_id: int
    ed25519: bytes
    curve25519: bytes
    name: str
    added_at: int


def make_device_list(
    account_key: nacl.signing.SigningKey, version: int, devices: list[DeviceEntry]
) -> tuple[DeviceList, SignedDeviceList]:
    """Build and sign (with the account key) device list ``version``.

    Returns:
        ``(parsed list, signed wire form)``.
    """
    dl = DeviceList(
        user_id=account_user_id(account_key),
        version=version,
        devices=tuple(
            Device(d.device_id, d.ed25519, d.curve25519, d.name, d.added_at) for d in devices
        ),
        issued_at=int(time.time()),
    )
    return dl, sign_device_list(account_key, dl)


def safety_fingerprint(account_key: bytes, user_id: str) -> str:
    """Signal-style numeric fingerprint of an account key, as six 5-digit groups.

    Follows Signal's "numeric fingerprint" (libsignal ``NumericFingerprintGenerator``,
    the per-party half of a safety number): ``h = version(2 bytes, big endian) ||
    key || stable_id``; then 5200 times ``h = SHA-512(h || key)``; the first 30
    bytes, in six 5-byte big-endian chunks, each ``mod 100000``, printed with 5
    digits. Here ``key`` is the raw 32-byte Ed25519 account key and ``stable_id``
    the user_id (ASCII). Two people compare it out of band; the same key always
    gives the same 30 digits.

    Args:
        account_key: 32-byte Ed25519 account public key.
        user_id: the user_id derived from it.

    Returns:
        e.g. ``"12345 67890 12345 67890 12345 67890"``.
    """
    h = FINGERPRINT_VERSION.to_bytes(2, "big") + account_key + user_id.encode("ascii")
    for _ in range(FINGERPRINT_ITERATIONS):
        h = hashlib.sha512(h + account_key).digest()
    return " ".join(f"{int.from_bytes(h[i:i + 5], 'big') % 100000:05d}" for i in range(0, 30, 5))


def safety_number(user_id_a: str, user_id_b: str) -> str:
    """The safety number of two accounts (Signal-style): both parties'
    :func:`safety_fingerprint` s (30 digits each) concatenated, the smaller first, so
    both sides compute the same 60 digits. Printed as twelve 5-digit groups.

    It depends only on the two account keys (the user ids), so it does not
    change when either account links or removes devices.

    Raises:
        relay.protocol.RemoteProtocolError: a user id is malformed.
    """
    halves = sorted(safety_fingerprint(key_from_user_id(uid), uid)
                    for uid in (user_id_a, user_id_b))
    return " ".join(halves)
