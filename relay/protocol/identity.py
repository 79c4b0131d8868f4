"""Self-certifying identities and signed device lists (DESIGN.md, "Identities and keys").

* ``user_id`` = lowercase RFC 4648 base32, without padding, of the account's
  32-byte Ed25519 public key (52 characters). Anyone can verify what the
  account signs from the user_id alone.
* A device list is msgpack ``{user_id, version, devices, issued_at, expires_at}``
  signed by the account key with a domain-separation prefix; relays and clients
  accept a list only if the signature verifies under the user_id's key. Clients
  refuse an expired list; a version may grow by at most :data:`MAX_VERSION_STEP`
  at a time (nodes and clients check), so a stolen account key cannot lock the
  owner out with a version no one can exceed.
* Device and node authentication sign fresh challenges, each with its own
  context string, so a signature for one purpose never verifies for another.

Pure functions over pynacl; no I/O.
"""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass

import msgpack
import nacl.exceptions
import nacl.signing

from .codec import refuse_ext
from .errors import ErrorCode, RemoteProtocolError
from .frames import SignedDeviceList

DEVICE_LIST_CONTEXT = b"wa-relay device-list v1\x00"
AUTH_CONTEXT = b"wa-relay device-auth v1\x00"
PEER_AUTH_CONTEXT = b"wa-relay peer-auth v1\x00"
ONE_TIME_KEY_CONTEXT = b"wa-relay one-time-key v1\x00"

USER_ID_LENGTH = 52
_USER_ID_RE = re.compile(f"[a-z2-7]{{{USER_ID_LENGTH}}}")  # ASCII only
MAX_DEVICES = 64
MAX_VERSION_STEP = 1024
"""Most a device-list version may grow by over the previous one a node or client holds."""
MAX_VERSION = 2**48
"""Device-list versions stay below this."""
MAX_DEVICE_LIST_BYTES = 64 * 1024
"""Largest signed device-list body (64 devices with their longest names fit in about
25 KiB); a larger one is refused ``too_large`` before it is parsed or stored."""


def user_id_from_key(public_key: bytes) -> str:
    """The user_id of a 32-byte Ed25519 account public key (lowercase base32, no padding)."""
    if len(public_key) != 32:
        raise ValueError("an Ed25519 public key is 32 bytes")
    return base64.b32encode(public_key).decode("ascii").rstrip("=").lower()


def key_from_user_id(user_id: str) -> bytes:
    """Inverse of :func:`user_id_from_key`.

    Raises:
        RemoteProtocolError: ``bad_request`` if ``user_id`` is not 52 lowercase
            base32 characters (``a-z``, ``2-7``).
    """
    if not is_user_id(user_id):
        raise RemoteProtocolError(ErrorCode.BAD_REQUEST, "user_id must be 52 lowercase base32 chars")
    return base64.b32decode(user_id.upper() + "====")  # cannot fail: checked above


def is_user_id(value: str) -> bool:
    """True if ``value`` is a syntactically valid user_id: a ``str`` of exactly 52
    characters from the lowercase base32 alphabet (``a-z``, ``2-7``).

    Cheap (one regular-expression match, no decoding): the node calls it for every
    recipient of every send. Any ``str`` is answered, never raised on.
    """
    return isinstance(value, str) and _USER_ID_RE.fullmatch(value) is not None


@dataclass(frozen=True, slots=True)
class Device:
    """One device entry of a device list.

    Attributes:
        device_id: small integer, 0 = primary.
        ed25519: 32-byte device signing key (vodozemac account).
        curve25519: 32-byte device identity key (Olm).
        name: human label, e.g. "laptop".
        added_at: seconds since the Unix epoch.
    """

    device_id: int
    ed25519: bytes
    curve25519: bytes
    name: str
    added_at: int


@dataclass(frozen=True, slots=True)
class DeviceList:
    """The account's device list; ``version`` only grows. ``issued_at`` and
    ``expires_at`` are seconds since the Unix epoch (``expires_at`` ``None``: a list
    signed before lists expired; clients refuse it)."""

    user_id: str
    version: int
    devices: tuple[Device, ...]
    issued_at: int
    expires_at: int | None = None

    def device(self, device_id: int) -> Device | None:
        """The entry for ``device_id``, or ``None``."""
        for d in self.devices:
            if d.device_id == device_id:
                return d
        return None

    @property
    def device_ids(self) -> frozenset[int]:
        """The set of device ids in the list."""
        return frozenset(d.device_id for d in self.devices)

    def encode(self) -> bytes:
        """Canonical msgpack body that gets signed."""
        extra = {} if self.expires_at is None else {"expires_at": self.expires_at}
        return msgpack.packb(
            {
                **extra,
                "user_id": self.user_id,
                "version": self.version,
                "devices": [
                    {
                        "device_id": d.device_id,
                        "ed25519": d.ed25519,
                        "curve25519": d.curve25519,
                        "name": d.name,
                        "added_at": d.added_at,
                    }
                    for d in self.devices
                ],
                "issued_at": self.issued_at,
            },
            use_bin_type=True,
        )


def sign_device_list(signing_key: nacl.signing.SigningKey, device_list: DeviceList) -> SignedDeviceList:
    """Sign ``device_list`` with the account key.

    Raises:
        ValueError: if the key does not belong to ``device_list.user_id``.
    """
    if user_id_from_key(bytes(signing_key.verify_key)) != device_list.user_id:
        raise ValueError("signing key does not match the device list's user_id")
    body = device_list.encode()
    sig = signing_key.sign(DEVICE_LIST_CONTEXT + body).signature
    return SignedDeviceList(body=body, signature=sig)


def encode_signed_list(signed: SignedDeviceList) -> bytes:
    """msgpack ``{body, signature}``: the body of a ``device_list`` envelope (a node's
    notice of a changed list) and the form a node stores a list in."""
    return msgpack.packb({"body": signed.body, "signature": signed.signature},
                         use_bin_type=True)


def decode_signed_list(blob: bytes, max_body: int = 1 << 16) -> SignedDeviceList:
    """Inverse of :func:`encode_signed_list` (not verified here: see
    :func:`verify_device_list`).

    Args:
        max_body: the largest ``body`` accepted, bytes.

    Raises:
        RemoteProtocolError: ``bad_request``: not such a map (ext types included).
    """
    try:
        m = msgpack.unpackb(blob, raw=False, max_bin_len=max_body, max_str_len=64,
                            max_map_len=4, max_array_len=0, ext_hook=refuse_ext)
        signed = SignedDeviceList(body=m["body"], signature=m["signature"])
    except (ValueError, TypeError, KeyError, msgpack.UnpackException) as exc:
        raise _bad("malformed signed device list") from exc
    if not isinstance(signed.body, bytes) or not isinstance(signed.signature, bytes):
        raise _bad("malformed signed device list")
    return signed


def _bad(msg: str) -> RemoteProtocolError:
    return RemoteProtocolError(ErrorCode.BAD_REQUEST, f"invalid device list: {msg}")


def verify_device_list(signed: SignedDeviceList, user_id: str | None = None) -> DeviceList:
    """Check the account signature and the body's shape; return the parsed list.

    Args:
        signed: what a relay or peer served.
        user_id: if given, the list must be for this user.

    Raises:
        RemoteProtocolError: ``unauthorized`` if the signature does not verify
            under the user_id's key; ``bad_request`` for a malformed body;
            ``too_large`` for a body above :data:`MAX_DEVICE_LIST_BYTES`.
    """
    if len(signed.body) > MAX_DEVICE_LIST_BYTES:
        raise RemoteProtocolError(
            ErrorCode.TOO_LARGE, f"a device list of {len(signed.body)} bytes exceeds the limit "
            f"of {MAX_DEVICE_LIST_BYTES} bytes")
    try:
        raw = msgpack.unpackb(
            signed.body, raw=False, strict_map_key=True, max_bin_len=64, max_str_len=256,
            max_array_len=MAX_DEVICES, max_map_len=16, ext_hook=refuse_ext,
        )
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        raise _bad(f"body is not msgpack ({exc})") from exc
    if not isinstance(raw, dict):
        raise _bad("body is not a map")
    uid = raw.get("user_id")
    if not isinstance(uid, str):
        raise _bad("user_id missing")
    if user_id is not None and uid != user_id:
        raise _bad(f"list is for {uid}, expected {user_id}")
    account_key = key_from_user_id(uid)
    try:
        nacl.signing.VerifyKey(account_key).verify(DEVICE_LIST_CONTEXT + signed.body, signed.signature)
    except (nacl.exceptions.BadSignatureError, nacl.exceptions.ValueError, TypeError) as exc:
        raise RemoteProtocolError(
            ErrorCode.UNAUTHORIZED, "device list is not signed by the user_id's account key"
        ) from exc
    version, issued_at, devs = raw.get("version"), raw.get("issued_at"), raw.get("devices")
    expires_at = raw.get("expires_at")
    if type(version) is not int or not 1 <= version < MAX_VERSION or type(issued_at) is not int:
        raise _bad(f"version/issued_at must be integers, 1 <= version < {MAX_VERSION}")
    if expires_at is not None and type(expires_at) is not int:
        raise _bad("expires_at must be an integer")
    if not isinstance(devs, list) or not devs:
        raise _bad("devices must be a non-empty array")
    devices = []
    for d in devs:
        if not isinstance(d, dict):
            raise _bad("device entry is not a map")
        did, ed, cu, name, added = (
            d.get("device_id"), d.get("ed25519"), d.get("curve25519"), d.get("name"), d.get("added_at")
        )
        if type(did) is not int or not 0 <= did < 2**31:
            raise _bad("device_id must be a non-negative int")
        if not (isinstance(ed, bytes) and len(ed) == 32 and isinstance(cu, bytes) and len(cu) == 32):
            raise _bad("device keys must be 32 bytes")
        if not isinstance(name, str) or type(added) is not int:
            raise _bad("device name/added_at have wrong types")
        devices.append(Device(did, ed, cu, name, added))
    if len({d.device_id for d in devices}) != len(devices):
        raise _bad("duplicate device_id")
    return DeviceList(uid, version, tuple(devices), issued_at, expires_at)


def _bound(binding: bytes) -> bytes:
    return b"\x00" + binding if binding else b""


def auth_message(nonce: bytes, node_id: str, user_id: str, device_id: int,
                 binding: bytes = b"") -> bytes:
    """Bytes a device signs (with its Ed25519 device key) to authenticate to ``node_id``
    on a connection whose channel binding is ``binding`` (32 bytes with TLS, ``b""`` on
    plain loopback ``ws://``; :func:`relay.protocol.cluster.server_end_point`)."""
    return b"".join(
        [AUTH_CONTEXT, nonce, node_id.encode(), b"\x00", user_id.encode(), b"\x00",
         str(device_id).encode(), _bound(binding)]
    )


def peer_auth_message(nonce: bytes, signer_node_id: str, verifier_node_id: str, ring_version: str,
                      binding: bytes = b"") -> bytes:
    """Bytes node ``signer_node_id`` signs to prove itself to ``verifier_node_id`` on a
    connection whose channel binding is ``binding`` (see :func:`auth_message`)."""
    return b"".join(
        [PEER_AUTH_CONTEXT, nonce, signer_node_id.encode(), b"\x00", verifier_node_id.encode(),
         b"\x00", ring_version.encode(), _bound(binding)]
    )


def one_time_key_message(user_id: str, device_id: int, key_id: str, key: bytes) -> bytes:
    """Bytes a device signs (with its Ed25519 device key) to vouch for one of its
    one-time or fallback keys: the context, ``user_id``, ``device_id``, ``key_id`` and
    the 32-byte Curve25519 key. A claimer checks it against the device's ``ed25519``
    in the account-signed device list, so a relay cannot substitute a key."""
    return b"".join([ONE_TIME_KEY_CONTEXT, user_id.encode(), b"\x00", str(device_id).encode(),
                     b"\x00", key_id.encode(), b"\x00", key])


def verify_signature(public_key: bytes, message: bytes, signature: bytes) -> bool:
    """True if ``signature`` is a valid Ed25519 signature of ``message`` by ``public_key``."""
    try:
        nacl.signing.VerifyKey(public_key).verify(message, signature)
    except (nacl.exceptions.BadSignatureError, nacl.exceptions.ValueError, TypeError):
        return False
    return True
