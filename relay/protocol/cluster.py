"""The signed cluster description, node-signed challenges and channel binding
(docs/protocol.md, "Cluster pinning"; docs/threat-model.md).

* A **cluster description** lists every node (id, URL, 32-byte Ed25519 node key),
  the cluster's size budget and a version. The *cluster key* (Ed25519) signs its
  canonical msgpack body with a context string. A client pins the description once
  (``wa-cli init``: the key passed as ``--cluster-key`` or confirmed by the user) and
  afterwards accepts a node only if it is in it; a newer description (higher
  ``version``) replaces the pinned one only if the same cluster key signed it.
* A node **signs its challenge** (nonce, its node id, ring version and the channel
  binding) with its node key: the client checks it against the node it meant to reach.
* The **channel binding** is 32 bytes that both ends compute for one connection:
  SHA-256 of the server's TLS certificate (DER), in the spirit of RFC 5929
  ``tls-server-end-point``; empty on a plain loopback ``ws://`` connection. Device
  ``auth`` and ``peer_auth`` sign it too, so a challenge relayed through another TLS
  endpoint, or an answer replayed on another connection, does not verify.

Pure functions over pynacl and hashlib; no I/O.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import ipaddress
from dataclasses import dataclass

import msgpack
import nacl.exceptions
import nacl.signing

from .codec import refuse_ext
from .errors import ErrorCode, RemoteProtocolError
from .identity import verify_signature

__all__ = [
    "CHALLENGE_CONTEXT", "CLUSTER_CONTEXT", "ClusterDescription", "ClusterNode", "PinnedCluster",
    "SignedCluster",
    "challenge_message", "check_challenge", "cluster_key_text", "is_loopback", "parse_cluster_key",
    "server_end_point", "sign_cluster", "verify_cluster",
]

CLUSTER_CONTEXT = b"wa-relay cluster v1\x00"
CHALLENGE_CONTEXT = b"wa-relay challenge v1\x00"
MAX_NODES = 256


@dataclass(frozen=True, slots=True)
class ClusterNode:
    """One node of a cluster description: ``id``, ``url`` (``wss://`` or loopback
    ``ws://``) and its 32-byte Ed25519 ``public_key``."""

    id: str
    url: str
    public_key: bytes


@dataclass(frozen=True, slots=True)
class ClusterDescription:
    """What the cluster key signs.

    Attributes:
        version: grows with every change of the cluster (>= 1).
        nodes: the nodes, sorted by id.
        max_frame, max_envelope: the cluster's size budget in bytes (``max_envelope``
            0: derived from ``max_frame``).
    """

    version: int
    nodes: tuple[ClusterNode, ...]
    max_frame: int
    max_envelope: int = 0

    def node(self, node_id: str) -> ClusterNode | None:
        """The node with id ``node_id``, or ``None``."""
        return next((n for n in self.nodes if n.id == node_id), None)

    def node_at(self, url: str) -> ClusterNode | None:
        """The node whose URL is ``url`` (a trailing ``/`` ignored), or ``None``."""
        want = url.rstrip("/")
        return next((n for n in self.nodes if n.url.rstrip("/") == want), None)

    def encode(self) -> bytes:
        """The canonical msgpack body that the cluster key signs."""
        return msgpack.packb({
            "version": self.version,
            "nodes": [[n.id, n.url, n.public_key] for n in sorted(self.nodes, key=lambda n: n.id)],
            "max_frame": self.max_frame,
            "max_envelope": self.max_envelope,
        }, use_bin_type=True)


@dataclass(frozen=True, slots=True)
class SignedCluster:
    """A cluster description as served and pinned.

    Attributes:
        body: :meth:`ClusterDescription.encode`.
        signature: 64-byte Ed25519 signature over ``CLUSTER_CONTEXT + body``.
        cluster_key: the 32-byte public cluster key.
    """

    body: bytes
    signature: bytes
    cluster_key: bytes


@dataclass(frozen=True, slots=True)
class PinnedCluster:
    """A verified cluster description and the signed form it came from (what a client
    keeps in its state).

    Attributes:
        signed: as served. description: its parsed, verified body.
    """

    signed: SignedCluster
    description: ClusterDescription

    @property
    def key(self) -> bytes:
        """The 32-byte cluster key."""
        return self.signed.cluster_key

    @property
    def version(self) -> int:
        """The description's version."""
        return self.description.version

    @classmethod
    def verify(cls, signed: SignedCluster, cluster_key: bytes | None = None) -> PinnedCluster:
        """:func:`verify_cluster` and keep both forms. Raises as it does."""
        return cls(signed, verify_cluster(signed, cluster_key))

    def newer(self, signed: SignedCluster) -> PinnedCluster:
        """A replacement for this pin: ``signed`` must be signed by the same cluster key
        and carry a higher version.

        Raises:
            RemoteProtocolError: ``unauthorized`` (another key, a bad signature),
                ``stale_version`` (not newer), ``bad_request`` (malformed).
        """
        pin = PinnedCluster.verify(signed, self.key)
        if pin.version <= self.version:
            raise RemoteProtocolError(
                ErrorCode.STALE_VERSION,
                f"cluster description version {pin.version} is not newer than {self.version}")
        return pin


def cluster_key_text(cluster_key: bytes) -> str:
    """The printed form of a cluster key (what ``--cluster-key`` takes): ``wa-cluster-``
    and the lowercase base32 of the 32-byte key, without padding."""
    return "wa-cluster-" + base64.b32encode(cluster_key).decode("ascii").rstrip("=").lower()


def parse_cluster_key(text: str) -> bytes:
    """Inverse of :func:`cluster_key_text` (the ``wa-cluster-`` prefix optional).

    Raises:
        ValueError: not the base32 of 32 bytes.
    """
    raw = text.strip().lower().removeprefix("wa-cluster-").upper()
    try:
        key = base64.b32decode(raw + "=" * (-len(raw) % 8))
    except (binascii.Error, ValueError) as exc:
        raise ValueError(f"not a cluster key: {text!r}") from exc
    if len(key) != 32:
        raise ValueError(f"not a cluster key (it holds {len(key)} bytes, not 32): {text!r}")
    return key


def sign_cluster(cluster_key: nacl.signing.SigningKey,
                 description: ClusterDescription) -> SignedCluster:
    """Sign ``description`` with the cluster key."""
    body = description.encode()
    signature = cluster_key.sign(CLUSTER_CONTEXT + body).signature
    return SignedCluster(body, signature, bytes(cluster_key.verify_key))


def _bad(message: str) -> RemoteProtocolError:
    return RemoteProtocolError(ErrorCode.BAD_REQUEST, f"invalid cluster description: {message}")


def verify_cluster(signed: SignedCluster, cluster_key: bytes | None = None) -> ClusterDescription:
    """Check the signature and the body's shape; return the description.

    Args:
        signed: what a node served (or what was pinned).
        cluster_key: the pinned or given key the description must be signed by
            (``None``: the key it carries, for trust on first use).

    Raises:
        RemoteProtocolError: ``unauthorized`` if another key signed it or the
            signature does not verify; ``bad_request`` for a malformed body.
    """
    if cluster_key is not None and signed.cluster_key != cluster_key:
        raise RemoteProtocolError(ErrorCode.UNAUTHORIZED,
                                  "the cluster description is signed by another cluster key")
    try:
        nacl.signing.VerifyKey(signed.cluster_key).verify(CLUSTER_CONTEXT + signed.body,
                                                          signed.signature)
    except (nacl.exceptions.BadSignatureError, nacl.exceptions.ValueError, TypeError) as exc:
        raise RemoteProtocolError(ErrorCode.UNAUTHORIZED,
                                  "the cluster description's signature does not verify") from exc
    try:
        raw = msgpack.unpackb(signed.body, raw=False, strict_map_key=True, max_bin_len=64,
                              max_str_len=2048, max_array_len=MAX_NODES, max_map_len=8,
                              ext_hook=refuse_ext)
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        raise _bad(f"body is not msgpack ({exc})") from exc
    if not isinstance(raw, dict):
        raise _bad("body is not a map")
    version, nodes = raw.get("version"), raw.get("nodes")
    max_frame, max_envelope = raw.get("max_frame"), raw.get("max_envelope", 0)
    if type(version) is not int or version < 1:
        raise _bad("version must be an integer >= 1")
    if type(max_frame) is not int or max_frame < 1 or type(max_envelope) is not int \
            or max_envelope < 0:
        raise _bad("max_frame/max_envelope must be non-negative integers")
    if not isinstance(nodes, list) or not nodes:
        raise _bad("nodes must be a non-empty array")
    out = []
    for entry in nodes:
        if not (isinstance(entry, list) and len(entry) == 3 and isinstance(entry[0], str)
                and entry[0] and isinstance(entry[1], str)
                and entry[1].startswith(("ws://", "wss://"))
                and isinstance(entry[2], bytes) and len(entry[2]) == 32):
            raise _bad("a node must be [id, ws(s) url, 32-byte key]")
        out.append(ClusterNode(entry[0], entry[1], entry[2]))
    if len({n.id for n in out}) != len(out):
        raise _bad("duplicate node id")
    return ClusterDescription(version, tuple(sorted(out, key=lambda n: n.id)), max_frame,
                              max_envelope)


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback IP addresses (``127.0.0.0/8``, ``::1``): the
    only hosts a plain ``ws://`` connection may go to."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def server_end_point(certificate_der: bytes | None) -> bytes:
    """The channel binding of a connection: SHA-256 of the server's DER certificate
    (RFC 5929 ``tls-server-end-point`` with SHA-256), or ``b""`` without TLS."""
    if not certificate_der:
        return b""
    return hashlib.sha256(certificate_der).digest()


def _framed(*parts: bytes) -> bytes:
    return b"".join(len(p).to_bytes(4, "big") + p for p in parts)


def challenge_message(nonce: bytes, node_id: str, ring_version: str, binding: bytes) -> bytes:
    """Bytes a node signs (with its node key) in its ``challenge``."""
    return CHALLENGE_CONTEXT + _framed(nonce, node_id.encode(), ring_version.encode(), binding)


def check_challenge(description: ClusterDescription, *, nonce: bytes, node_id: str,
                    ring_version: str, signature: bytes | None, binding: bytes,
                    expect_node_id: str | None = None) -> ClusterNode:
    """Check a node's challenge against a pinned cluster description.

    Args:
        expect_node_id: the node the client meant to reach (``None``: any node of
            the description, e.g. the URL given to ``init``).
        binding: this connection's channel binding as the client sees it.

    Returns:
        The description's entry for the node.

    Raises:
        RemoteProtocolError: ``unauthorized``: the node is not in the description,
            is another node than expected, or its signature does not verify (another
            key, or a challenge made for another channel: a relayed challenge).
    """
    node = description.node(node_id)
    if node is None:
        raise RemoteProtocolError(ErrorCode.UNAUTHORIZED,
                                  f"node {node_id!r} is not in the pinned cluster description")
    if expect_node_id is not None and node_id != expect_node_id:
        raise RemoteProtocolError(
            ErrorCode.UNAUTHORIZED,
            f"reached node {node_id!r}, expected {expect_node_id!r} at this URL")
    if signature is None or not verify_signature(
            node.public_key, challenge_message(nonce, node_id, ring_version, binding), signature):
        raise RemoteProtocolError(
            ErrorCode.UNAUTHORIZED,
            f"the challenge of node {node_id!r} is not signed by its key for this connection")
    return node
