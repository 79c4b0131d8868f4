"""Node and cluster configuration files (TOML), read with :mod:`tomllib`.

``cluster.toml`` (the same file on every node)::

    [[node]]
    id = "n1"
    url = "ws://127.0.0.1:7400"
    public_key = "<standard base64 of the 32-byte Ed25519 public key>"

``node.toml`` (one per node; relative paths are relative to its directory)::

    id = "n1"
    host = "127.0.0.1"
    port = 7400
    cluster = "../cluster.toml"
    key_file = "node.key"          # 32-byte raw Ed25519 seed, mode 0600
    storage = "lmdb:///abs/DIR/n1/data"
    log_file = "node.log"          # optional
    queue_ttl = 2592000            # seconds (30 days)
    max_queue = 10000              # envelopes per device queue
    max_frame = 1048576            # bytes
    max_envelope = 262144          # bytes, largest envelope body (optional; see docs/protocol.md)
    link_ttl = 120                 # seconds a linking mailbox stays open (optional)
    media_quota = 10737418240      # bytes all media blobs may take (optional, 10 GiB)
    media_ttl = 2592000            # seconds a media blob is kept (optional, 30 days)
    media_upload_ttl = 86400       # seconds an unfinished upload is kept idle (optional, 1 day)
    max_media_size = 2147483648    # largest encrypted file, bytes (optional, 2 GiB)
    handshake_timeout = 10         # seconds to authenticate (or open a link mailbox) (optional)
    keepalive_interval = 20        # seconds of silence from a connection before a ping; 0 = off
    keepalive_timeout = 10         # seconds for the pong before the connection is closed
    max_pending_per_ip = 64        # unauthenticated connections per address (optional)
    max_connections = 10000        # connections of all kinds at once (optional)
    max_mailboxes_per_ip = 8       # open linking mailboxes per address (optional)

Both files are flat; :mod:`relay.cluster_files` writes them (and lays out a
local cluster). Every problem raises :class:`ConfigError` with a message
naming the file and the field; the CLI turns it into exit code 2.
"""

from __future__ import annotations

import base64
import binascii
import os
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nacl.signing

from .protocol import Limits
from .ring import NodeInfo

DEFAULT_QUEUE_TTL = 30 * 24 * 3600
DEFAULT_MAX_QUEUE = 10_000
DEFAULT_MAX_FRAME = 1024 * 1024
DEFAULT_LINK_TTL = 120.0
DEFAULT_MEDIA_QUOTA = 10 * 1024**3
DEFAULT_MEDIA_TTL = 30 * 24 * 3600.0
DEFAULT_MEDIA_UPLOAD_TTL = 24 * 3600.0
DEFAULT_MAX_MEDIA_SIZE = 2 * 1024**3
DEFAULT_HANDSHAKE_TIMEOUT = 10.0
DEFAULT_KEEPALIVE_INTERVAL = 20.0
DEFAULT_KEEPALIVE_TIMEOUT = 10.0
DEFAULT_MAX_PENDING_PER_IP = 64
DEFAULT_MAX_CONNECTIONS = 10_000
DEFAULT_MAX_MAILBOXES_PER_IP = 8


class ConfigError(Exception):
    """A configuration file is missing, unreadable or invalid (CLI exit code 2)."""


@dataclass(frozen=True, slots=True)
class NodeConfig:
    """Everything one node needs to run.

    Attributes:
        id: this node's id; must appear in ``cluster``.
        host, port: where to listen (port 0 = any free port).
        cluster: all nodes of the cluster file, this one included.
        signing_key: this node's Ed25519 key (its public half must match the cluster file).
        storage: storage URL for :func:`storage.open_storage`.
        log_file: extra log destination, or ``None``.
        queue_ttl: seconds after which queued envelopes expire.
        max_queue: most envelopes one device queue may hold.
        max_frame: largest accepted WebSocket message, bytes.
        link_ttl: seconds a linking mailbox lives at most (docs/protocol.md, "Linking").
        media_quota: most bytes of media blobs the node holds (docs/media.md).
        media_ttl: seconds after its last write when a media blob is deleted.
        media_upload_ttl: seconds after its last chunk when an unfinished upload is deleted.
        max_media_size: largest accepted media blob (encrypted file), bytes.
        handshake_timeout: seconds a new connection has to authenticate
            (``auth``/``peer_auth``) or open a linking mailbox; then close 1008.
        keepalive_interval: seconds without a received message after which the
            node sends a WebSocket ping on a connection (0: never).
        keepalive_timeout: seconds for the pong; without it the node closes the
            connection (1001 going away is not sent: the link is dead) and frees it.
        max_pending_per_ip: most unauthenticated connections from one address
            (an IPv4 address or an IPv6 /64); more are refused (HTTP 503).
        max_connections: most connections of all kinds at once; more are refused (HTTP 503).
        max_mailboxes_per_ip: most linking mailboxes open at once from one
            address; more ``link_open`` get ``rate_limited``.
    """

    id: str
    host: str
    port: int
    cluster: tuple[NodeInfo, ...]
    signing_key: nacl.signing.SigningKey
    storage: str
    log_file: Path | None = None
    queue_ttl: float = DEFAULT_QUEUE_TTL
    max_queue: int = DEFAULT_MAX_QUEUE
    max_frame: int = DEFAULT_MAX_FRAME
    max_envelope: int | None = None
    link_ttl: float = DEFAULT_LINK_TTL
    media_quota: int = DEFAULT_MEDIA_QUOTA
    media_ttl: float = DEFAULT_MEDIA_TTL
    media_upload_ttl: float = DEFAULT_MEDIA_UPLOAD_TTL
    max_media_size: int = DEFAULT_MAX_MEDIA_SIZE
    handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT
    keepalive_interval: float = DEFAULT_KEEPALIVE_INTERVAL
    keepalive_timeout: float = DEFAULT_KEEPALIVE_TIMEOUT
    max_pending_per_ip: int = DEFAULT_MAX_PENDING_PER_IP
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    max_mailboxes_per_ip: int = DEFAULT_MAX_MAILBOXES_PER_IP

    @property
    def node(self) -> NodeInfo:
        """This node's cluster entry."""
        for n in self.cluster:
            if n.id == self.id:
                return n
        raise ConfigError(f"node {self.id!r} is not in the cluster file")  # pragma: no cover


def read_toml(path: Path) -> dict[str, Any]:
    """Parse a TOML file.

    Raises:
        ConfigError: missing, unreadable or invalid (the message names the file).
    """
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except FileNotFoundError as exc:
        raise ConfigError(f"{path}: file not found") from exc
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read ({exc.strerror})") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from exc


def _field(data: dict[str, Any], name: str, tp: type, where: str, default: Any = ...) -> Any:
    if name not in data:
        if default is ...:
            raise ConfigError(f"{where}: missing field {name!r}")
        return default
    value = data[name]
    if tp is int and (type(value) is not int):
        raise ConfigError(f"{where}: field {name!r} must be an integer")
    if tp is float and (type(value) not in (int, float)):
        raise ConfigError(f"{where}: field {name!r} must be a number")
    if tp is str and (not isinstance(value, str) or not value):
        raise ConfigError(f"{where}: field {name!r} must be a non-empty string")
    return value


def load_cluster(path: str | os.PathLike[str]) -> tuple[NodeInfo, ...]:
    """Read a cluster file.

    Raises:
        ConfigError: unreadable file, no ``[[node]]``, a bad field, duplicate ids.
    """
    path = Path(path)
    data = read_toml(path)
    entries = data.get("node")
    if not isinstance(entries, list) or not entries:
        raise ConfigError(f"{path}: expected at least one [[node]] table")
    nodes: list[NodeInfo] = []
    for i, entry in enumerate(entries):
        where = f"{path}: [[node]] #{i + 1}"
        if not isinstance(entry, dict):
            raise ConfigError(f"{where}: not a table")
        node_id = _field(entry, "id", str, where)
        url = _field(entry, "url", str, where)
        if not url.startswith(("ws://", "wss://")):
            raise ConfigError(f"{where}: url must start with ws:// or wss://")
        key_b64 = _field(entry, "public_key", str, where)
        try:
            key = base64.b64decode(key_b64, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise ConfigError(f"{where}: public_key is not standard base64") from exc
        if len(key) != 32:
            raise ConfigError(f"{where}: public_key must encode 32 bytes, got {len(key)}")
        nodes.append(NodeInfo(node_id, url, key))
    ids = [n.id for n in nodes]
    if len(set(ids)) != len(ids):
        raise ConfigError(f"{path}: duplicate node id")
    return tuple(nodes)


def load_key(path: str | os.PathLike[str]) -> nacl.signing.SigningKey:
    """Read a 32-byte raw Ed25519 seed.

    Raises:
        ConfigError: unreadable, wrong length, or readable by group/others.
    """
    path = Path(path)
    try:
        st = path.stat()
        seed = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read key file ({exc.strerror})") from exc
    if os.name == "posix" and st.st_mode & 0o077:
        raise ConfigError(f"{path}: key file must not be accessible by others (chmod 600)")
    if len(seed) != 32:
        raise ConfigError(f"{path}: key file must hold a 32-byte Ed25519 seed, got {len(seed)}")
    return nacl.signing.SigningKey(seed)


def load_node_config(path: str | os.PathLike[str]) -> NodeConfig:
    """Read ``node.toml``, the cluster file and the key file it names.

    Raises:
        ConfigError: any missing file, bad field, or inconsistency (node not in
            the cluster, key not matching the cluster's public key).
    """
    path = Path(path)
    data = read_toml(path)
    where = str(path)
    base = path.resolve().parent

    def rel(p: str) -> Path:
        return (base / p) if not Path(p).is_absolute() else Path(p)

    node_id = _field(data, "id", str, where)
    host = _field(data, "host", str, where, "127.0.0.1")
    port = _field(data, "port", int, where)
    if not 0 <= port <= 65535:
        raise ConfigError(f"{where}: port must be within 0..65535")
    cluster = load_cluster(rel(_field(data, "cluster", str, where)))
    key = load_key(rel(_field(data, "key_file", str, where)))
    storage = _field(data, "storage", str, where)
    log_file = data.get("log_file")
    if log_file is not None and (not isinstance(log_file, str) or not log_file):
        raise ConfigError(f"{where}: field 'log_file' must be a non-empty string")
    ttl = _field(data, "queue_ttl", float, where, DEFAULT_QUEUE_TTL)
    max_queue = _field(data, "max_queue", int, where, DEFAULT_MAX_QUEUE)
    max_frame = _field(data, "max_frame", int, where, DEFAULT_MAX_FRAME)
    if ttl <= 0 or max_queue <= 0 or max_frame < 1024:
        raise ConfigError(f"{where}: queue_ttl and max_queue must be > 0, max_frame >= 1024")
    max_envelope = _field(data, "max_envelope", int, where, None)
    try:
        Limits.for_node(max_frame, max_envelope)
    except ValueError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    link_ttl = _field(data, "link_ttl", float, where, DEFAULT_LINK_TTL)
    if link_ttl <= 0:
        raise ConfigError(f"{where}: link_ttl must be > 0")
    media_quota = _field(data, "media_quota", int, where, DEFAULT_MEDIA_QUOTA)
    media_ttl = _field(data, "media_ttl", float, where, DEFAULT_MEDIA_TTL)
    media_upload_ttl = _field(data, "media_upload_ttl", float, where, DEFAULT_MEDIA_UPLOAD_TTL)
    max_media_size = _field(data, "max_media_size", int, where, DEFAULT_MAX_MEDIA_SIZE)
    if media_quota < 0 or media_ttl <= 0 or media_upload_ttl <= 0 or max_media_size < 0:
        raise ConfigError(f"{where}: media_quota and max_media_size must be >= 0, "
                          "media_ttl and media_upload_ttl > 0")
    handshake_timeout = _field(data, "handshake_timeout", float, where, DEFAULT_HANDSHAKE_TIMEOUT)
    max_pending_per_ip = _field(data, "max_pending_per_ip", int, where, DEFAULT_MAX_PENDING_PER_IP)
    max_connections = _field(data, "max_connections", int, where, DEFAULT_MAX_CONNECTIONS)
    max_mailboxes_per_ip = _field(data, "max_mailboxes_per_ip", int, where,
                                  DEFAULT_MAX_MAILBOXES_PER_IP)
    keepalive_interval = _field(data, "keepalive_interval", float, where,
                                DEFAULT_KEEPALIVE_INTERVAL)
    keepalive_timeout = _field(data, "keepalive_timeout", float, where, DEFAULT_KEEPALIVE_TIMEOUT)
    if keepalive_interval < 0 or keepalive_timeout <= 0:
        raise ConfigError(f"{where}: keepalive_interval must be >= 0, keepalive_timeout > 0")
    if handshake_timeout <= 0 or min(max_pending_per_ip, max_connections, max_mailboxes_per_ip) < 1:
        raise ConfigError(f"{where}: handshake_timeout must be > 0, max_pending_per_ip, "
                          "max_connections and max_mailboxes_per_ip >= 1")
    me = next((n for n in cluster if n.id == node_id), None)
    if me is None:
        raise ConfigError(f"{where}: node id {node_id!r} is not in the cluster file")
    if bytes(key.verify_key) != me.public_key:
        raise ConfigError(f"{where}: key_file does not match the public key of {node_id!r}")
    return NodeConfig(
        id=node_id, host=host, port=port, cluster=cluster, signing_key=key, storage=storage,
        log_file=rel(log_file) if log_file else None, queue_ttl=float(ttl),
        max_queue=max_queue, max_frame=max_frame, max_envelope=max_envelope, link_ttl=float(link_ttl),
        media_quota=media_quota, media_ttl=float(media_ttl),
        media_upload_ttl=float(media_upload_ttl), max_media_size=max_media_size,
        handshake_timeout=float(handshake_timeout),
        keepalive_interval=float(keepalive_interval), keepalive_timeout=float(keepalive_timeout),
        max_pending_per_ip=max_pending_per_ip,
        max_connections=max_connections, max_mailboxes_per_ip=max_mailboxes_per_ip,
    )


def __getattr__(name: str) -> Any:
    """``init_cluster`` and the file writers moved to :mod:`relay.cluster_files`;
    importing them from here keeps working."""
    if name in ("init_cluster", "ClusterMismatch", "format_cluster", "format_node",
                "write_text_atomic", "write_key"):
        from relay import cluster_files

        return getattr(cluster_files, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
