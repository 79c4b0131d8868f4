"""Linking codes, device info and the sealed account material (docs/protocol.md,
"Linking a companion device"). Pure functions over msgpack and pynacl; no I/O.

* ``device_info`` = msgpack ``{ed25519, curve25519, ephemeral, name}``: the new
  device's two public keys, an ephemeral X25519 public key to seal the answer
  to, and its label. The new device sends it in ``link_open``.
* The linking code is ``"wa1-" + base32(msgpack {n, m, h, s})`` (lowercase
  RFC 4648, no padding): ``n`` the mailbox's node id, ``m`` the 16-byte
  mailbox id, ``h`` = BLAKE2b-256(device_info), and ``s`` a 16-byte secret
  that never goes to a relay. ``h`` lets the primary check that the relay
  handed out the device_info the new device committed to; ``s`` (as in
  WhatsApp's QR "ADV secret") lets the new device check that the material was
  made by whoever read the code, not by a relay that saw ``device_info`` and
  could otherwise enrol it into an account of its own. Codes without ``s``
  decode (the proof is then absent), but :mod:`cli.linking` always sets it.
* ``material`` = msgpack ``{user_id, device_id, device_list: {body, signature},
  name, contacts, history, history_omitted, groups: [{body, signature}], proof}``
  sealed (``nacl.public.SealedBox``) to the ephemeral key. ``proof`` = keyed
  BLAKE2b-256(key = s) over the signed list. ``groups`` are the primary's
  current admin-signed group states (:mod:`cli.group_state`), which the new
  device verifies like received ``group_state`` payloads; no Megolm session
  keys travel (a device linked later gets only current and later keys).
  ``history_omitted`` counts the oldest history entries left out to fit the
  frame (:data:`MATERIAL_BUDGET`).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from dataclasses import dataclass, field

import msgpack
import nacl.exceptions
import nacl.public

from cli.features.attachment import Attachment, AttachmentError
from cli.session.group_state import SignedGroupState
from relay.protocol import is_user_id
from relay.protocol.cluster import SignedCluster
from relay.protocol.codec import refuse_ext
from relay.protocol.frames import SignedDeviceList

CODE_PREFIX = "wa1-"
MAILBOX_ID_LEN = 16
SECRET_LEN = 16
MAX_CODE_LEN = 400
MAX_DEVICE_NAME = 100
HISTORY_DEFAULT = 500
MATERIAL_BUDGET = 900 * 1024  # bytes of msgpack material; the sealed box adds 48, the frame ~100
HISTORY_FIELDS = {
    "id": str, "direction": str, "peer": str, "from": str, "from_device": int, "ts": int,
    "type": str, "text": str, "from_name": str, "group": str,
}


class LinkCodeError(ValueError):
    """A linking code, device info or material is malformed (a usage error for a code)."""


def _unpack(data: bytes, what: str, **limits) -> object:
    try:
        return msgpack.unpackb(data, raw=False, strict_map_key=True, ext_hook=refuse_ext, **limits)
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        raise LinkCodeError(f"{what} is malformed (not msgpack)") from exc


def info_digest(device_info: bytes) -> bytes:
    """BLAKE2b-256 of a ``device_info`` blob (the code's ``h``)."""
    return hashlib.blake2b(device_info, digest_size=32).digest()


def device_fingerprint(ed25519: bytes, curve25519: bytes) -> str:
    """A device's key fingerprint: 32 hex digits of BLAKE2b-128 over both public keys,
    in groups of four (``"1a2b 3c4d ..."``). The new device prints it while it waits;
    the primary shows it before approving, so the user can compare."""
    digest = hashlib.blake2b(ed25519 + curve25519, digest_size=16,
                             person=b"wa-device-fp").hexdigest()
    return " ".join(digest[i:i + 4] for i in range(0, 32, 4))


@dataclass(frozen=True, slots=True)
class LinkCode:
    """The parts of a linking code. ``secret`` is ``None`` for a code without ``s``."""

    node_id: str
    mailbox_id: bytes
    digest: bytes
    secret: bytes | None = None

    def encode(self) -> str:
        """The printable code, ``wa1-`` + lowercase unpadded base32."""
        m = {"n": self.node_id, "m": self.mailbox_id, "h": self.digest}
        if self.secret is not None:
            m["s"] = self.secret
        raw = msgpack.packb(m, use_bin_type=True)
        return CODE_PREFIX + base64.b32encode(raw).decode("ascii").rstrip("=").lower()

    @classmethod
    def decode(cls, text: str) -> LinkCode:
        """Parse a code as printed by ``wa-cli link`` (surrounding blanks and case ignored).

        Raises:
            LinkCodeError: wrong prefix, not base32, not the expected msgpack map.
        """
        text = text.strip().lower()
        if not text.startswith(CODE_PREFIX) or len(text) > MAX_CODE_LEN:
            raise LinkCodeError(f"a linking code starts with {CODE_PREFIX!r} "
                                "(copy it from 'wa-cli link')")
        body = text[len(CODE_PREFIX):].upper()
        try:
            raw = base64.b32decode(body + "=" * (-len(body) % 8))
        except (binascii.Error, ValueError) as exc:
            raise LinkCodeError("the linking code is malformed (not base32)") from exc
        m = _unpack(raw, "the linking code", max_map_len=8, max_bin_len=64, max_str_len=64)
        if not isinstance(m, dict):
            raise LinkCodeError("the linking code is malformed")
        n, mb, h, s = m.get("n"), m.get("m"), m.get("h"), m.get("s")
        if not (isinstance(n, str) and n and isinstance(mb, bytes) and len(mb) == MAILBOX_ID_LEN
                and isinstance(h, bytes) and len(h) == 32
                and (s is None or (isinstance(s, bytes) and len(s) == SECRET_LEN))):
            raise LinkCodeError("the linking code is malformed")
        return cls(n, mb, h, s)


@dataclass(frozen=True, slots=True)
class DeviceInfo:
    """What a new device announces in ``link_open`` (all keys 32 bytes)."""

    ed25519: bytes
    curve25519: bytes
    ephemeral: bytes
    name: str

    @property
    def fingerprint(self) -> str:
        """:func:`device_fingerprint` of the device keys."""
        return device_fingerprint(self.ed25519, self.curve25519)

    def encode(self) -> bytes:
        """The ``device_info`` blob."""
        return msgpack.packb({"ed25519": self.ed25519, "curve25519": self.curve25519,
                              "ephemeral": self.ephemeral, "name": self.name},
                             use_bin_type=True)

    @classmethod
    def decode(cls, data: bytes) -> DeviceInfo:
        """Parse and type-check a ``device_info`` blob.

        Raises:
            LinkCodeError: malformed.
        """
        m = _unpack(data, "device info", max_map_len=8, max_bin_len=64, max_str_len=1024)
        if not isinstance(m, dict):
            raise LinkCodeError("device info is not a map")
        keys = [m.get(k) for k in ("ed25519", "curve25519", "ephemeral")]
        name = m.get("name")
        if not all(isinstance(k, bytes) and len(k) == 32 for k in keys) or not isinstance(name, str):
            raise LinkCodeError("device info has wrong fields")
        return cls(*keys, name=name[:MAX_DEVICE_NAME])


def link_proof(secret: bytes, signed: SignedDeviceList) -> bytes:
    """Keyed BLAKE2b-256 (key = the code's secret) over the signed device list."""
    return hashlib.blake2b(
        len(signed.body).to_bytes(4, "big") + signed.body + signed.signature,
        digest_size=32, key=secret, person=b"wa-link-proof",
    ).digest()


@dataclass
class Material:
    """The account material the primary seals to a new device.

    Attributes:
        user_id: the account; ``device_id``: the new device's id.
        device_list: the signed list that includes the new device.
        name: the account's display name (sent inside messages).
        contacts: local aliases ``{alias: user_id}``.
        history: recent messages, oldest first (see :data:`HISTORY_FIELDS`).
        groups: the account's current signed group states (not yet verified after
            :meth:`decode`; see :func:`cli.linking.save_linked`).
        proof: :func:`link_proof`, or ``None`` if the code had no secret.
        history_omitted: after :meth:`decode`, how many older history entries the
            primary left out to fit the frame (0 when built locally).
        cluster: the primary's pinned cluster description (signed), which the new
            device pins in turn, or ``None`` (not yet verified after :meth:`decode`).
    """

    user_id: str
    device_id: int
    device_list: SignedDeviceList
    name: str
    contacts: dict[str, str] = field(default_factory=dict)
    history: list[dict] = field(default_factory=list)
    proof: bytes | None = None
    groups: list[SignedGroupState] = field(default_factory=list)
    history_omitted: int = 0
    cluster: SignedCluster | None = None

    def _map(self, history: list[dict], omitted: int) -> dict:
        return {"user_id": self.user_id, "device_id": self.device_id,
                "device_list": {"body": self.device_list.body,
                                "signature": self.device_list.signature},
                "name": self.name, "contacts": self.contacts, "history": history,
                "history_omitted": omitted, "groups": [g.to_map() for g in self.groups],
                "proof": self.proof,
                "cluster": None if self.cluster is None else {
                    "body": self.cluster.body, "signature": self.cluster.signature,
                    "key": self.cluster.cluster_key}}

    def fit(self, budget: int = MATERIAL_BUDGET) -> tuple[bytes, int]:
        """msgpack of the material with as many of the *newest* history entries as fit
        under ``budget`` bytes (the oldest are left out first, and counted in
        ``history_omitted`` so the new device can say so).

        Returns:
            ``(encoded, kept)``: the bytes and how many of ``self.history`` they hold.

        Raises:
            ValueError: even without any history it does not fit (too many groups).
        """
        # the largest omitted count encodes longest, so the reserve covers any count
        fixed = len(msgpack.packb(self._map([], len(self.history)), use_bin_type=True))
        room = budget - fixed - 8  # array header
        if room < 0:
            raise ValueError(f"the account material ({fixed} bytes without history, "
                             f"{len(self.groups)} groups) does not fit in a linking frame")
        kept: list[dict] = []
        for entry in reversed(self.history):
            size = len(msgpack.packb(entry, use_bin_type=True))
            if size > room:
                break
            room -= size
            kept.append(entry)
        kept.reverse()
        omitted = len(self.history) - len(kept)
        return msgpack.packb(self._map(kept, omitted), use_bin_type=True), len(kept)

    def encode(self, budget: int = MATERIAL_BUDGET) -> bytes:
        """The encoded material of :meth:`fit` (history trimmed to ``budget`` bytes).

        Raises:
            ValueError: even without any history it does not fit.
        """
        return self.fit(budget)[0]

    @classmethod
    def decode(cls, data: bytes) -> Material:
        """Parse and type-check material; malformed history entries, contacts and
        group entries are skipped (group signatures are checked by the caller).

        Raises:
            LinkCodeError: malformed.
        """
        m = _unpack(data, "account material", max_map_len=100_000, max_array_len=100_000)
        if not isinstance(m, dict):
            raise LinkCodeError("account material is not a map")
        uid, did, dl, name = m.get("user_id"), m.get("device_id"), m.get("device_list"), m.get("name")
        contacts, history, proof = m.get("contacts", {}), m.get("history", []), m.get("proof")
        group_maps, omitted = m.get("groups", []), m.get("history_omitted", 0)
        pinned = m.get("cluster")
        cluster = None
        if isinstance(pinned, dict) and all(isinstance(pinned.get(k), bytes)
                                            for k in ("body", "signature", "key")):
            cluster = SignedCluster(pinned["body"], pinned["signature"], pinned["key"])
        if not (isinstance(uid, str) and type(did) is int and isinstance(dl, dict)
                and isinstance(dl.get("body"), bytes) and isinstance(dl.get("signature"), bytes)
                and isinstance(name, str) and isinstance(contacts, dict)
                and isinstance(history, list) and (proof is None or isinstance(proof, bytes))
                and isinstance(group_maps, list) and type(omitted) is int and omitted >= 0):
            raise LinkCodeError("account material has wrong fields")
        return cls(
            user_id=uid, device_id=did,
            device_list=SignedDeviceList(body=dl["body"], signature=dl["signature"]),
            name=name[:MAX_DEVICE_NAME],
            contacts={k: v for k, v in contacts.items()
                      if isinstance(k, str) and isinstance(v, str) and is_user_id(v)},
            history=[e for e in (clean_history_entry(x) for x in history) if e is not None],
            proof=proof,
            groups=[SignedGroupState(g["body"], g["signature"]) for g in group_maps
                    if isinstance(g, dict) and isinstance(g.get("body"), bytes)
                    and isinstance(g.get("signature"), bytes)],
            history_omitted=omitted, cluster=cluster,
        )


def _hex16(value: object) -> bool:
    """True for 32 hex digits (a msg_id or group id)."""
    if not isinstance(value, str) or len(value) != 32:
        return False
    try:
        bytes.fromhex(value)
    except ValueError:
        return False
    return True


def clean_history_entry(entry: object) -> dict | None:
    """Keep the known, correctly typed fields of a history entry (:data:`HISTORY_FIELDS`),
    for a device being linked (built by the primary, checked again by the new device).

    Returns ``None`` unless it has ``id`` (32 hex digits), ``direction`` (``in``/``out``),
    ``from`` (a user id), ``ts`` and ``peer``: a user id, or for a group message the
    ``group_id`` (32 hex digits, kept). ``type``, ``text``, ``from_name`` and
    ``from_device`` default to ``"text"``, ``""``, ``""`` and 0.

    A ``file`` message keeps its attachment (reference, key, hash, name, size, mime:
    :class:`cli.attachment.Attachment`) so the new device can fetch it itself while
    the relay still has it, but never the primary's local ``path`` or download
    ``error``: it gets ``path: None`` and ``imported: True`` (not downloaded; not
    fetched by ``recv`` on its own, see ``wa-cli history --download``). A file
    entry whose attachment does not parse is kept as a plain message without it.
    """
    if not isinstance(entry, dict):
        return None
    out = {k: v for k, v in entry.items()
           if k in HISTORY_FIELDS and type(v) is HISTORY_FIELDS[k]}
    group_id = entry.get("group_id")
    peer_ok = (_hex16(group_id) and out.get("peer") == group_id) or is_user_id(out.get("peer", ""))
    if (not {"id", "peer", "from", "ts"} <= out.keys()
            or out.get("direction") not in ("in", "out")
            or not (peer_ok and is_user_id(out["from"])) or not _hex16(out["id"])):
        return None
    if _hex16(group_id) and out["peer"] == group_id:
        out["group_id"] = group_id
    if out.get("type") == "file" and isinstance(entry.get("file"), dict):
        try:
            att = Attachment.from_map(entry["file"])
        except AttachmentError:
            pass
        else:
            out["file"] = {**att.to_map(), "path": None, "imported": True}
    return {"type": "text", "text": "", "from_name": "", "from_device": 0, **out}


def recent_history(history: list[dict], limit: int = HISTORY_DEFAULT) -> list[dict]:
    """The last ``limit`` entries of a local history, cleaned for sending.

    Held message requests (``held``, :mod:`cli.session.prefs`) are never sent: they
    are not history until accepted on this device."""
    shown = [e for e in history if not (isinstance(e, dict) and e.get("held"))]
    recent = shown[-limit:] if limit > 0 else []
    return [e for e in (clean_history_entry(x) for x in recent) if e is not None]


def seal(ephemeral: bytes, plaintext: bytes) -> bytes:
    """``SealedBox(ephemeral).encrypt(plaintext)`` (anonymous X25519 + XSalsa20-Poly1305)."""
    return nacl.public.SealedBox(nacl.public.PublicKey(ephemeral)).encrypt(plaintext)


def unseal(ephemeral: nacl.public.PrivateKey, body: bytes) -> bytes:
    """Open a sealed box with the ephemeral private key.

    Raises:
        LinkCodeError: not sealed to this key, or tampered.
    """
    try:
        return nacl.public.SealedBox(ephemeral).decrypt(body)
    except (nacl.exceptions.CryptoError, ValueError, TypeError) as exc:
        raise LinkCodeError("the linking answer is not sealed to this device") from exc


def proof_ok(secret: bytes, material: Material) -> bool:
    """True if ``material.proof`` matches the code secret (constant-time compare)."""
    return material.proof is not None and hmac.compare_digest(
        material.proof, link_proof(secret, material.device_list))
