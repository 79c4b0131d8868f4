""":class:`NodeConfig`, what one running node is given, and :class:`ConfigError`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import nacl.signing

from relay.config.abuse import AbuseLimits
from relay.config.ring import NodeInfo
from relay.protocol.cluster import SignedCluster

from .schema import (
    DEFAULT_ADMIN_HOST,
    DEFAULT_HANDSHAKE_TIMEOUT,
    DEFAULT_KEEPALIVE_INTERVAL,
    DEFAULT_KEEPALIVE_TIMEOUT,
    DEFAULT_LINK_TTL,
    DEFAULT_MAX_CONNECTIONS,
    DEFAULT_MAX_CONNECTIONS_PER_IP,
    DEFAULT_MAX_FRAME,
    DEFAULT_MAX_MAILBOXES,
    DEFAULT_MAX_MAILBOXES_PER_IP,
    DEFAULT_MAX_MEDIA_SIZE,
    DEFAULT_MAX_PENDING,
    DEFAULT_MAX_PENDING_PER_IP,
    DEFAULT_MAX_QUEUE,
    DEFAULT_MEDIA_QUOTA,
    DEFAULT_MEDIA_TTL,
    DEFAULT_MEDIA_UPLOAD_TTL,
    DEFAULT_OTK_CLAIM_BURST,
    DEFAULT_QUEUE_TTL,
    DEFAULT_SHUTDOWN_GRACE,
)


class ConfigError(Exception):
    """A configuration file is missing, unreadable or invalid (CLI exit code 2)."""


@dataclass(frozen=True, slots=True)
class NodeConfig:
    """Everything one node needs to run (settings: docs/operations.md).

    Attributes:
        id: this node's id; must appear in ``cluster``.
        host, port: where to listen (port 0 = any free port).
        cluster: all nodes of the cluster file, this one included.
        signing_key: this node's Ed25519 key (its public half must match the cluster file).
        storage: storage URL for :func:`storage.open_storage` (an ``lmdb://`` path
            is absolute once loaded from a file).
        log_file: extra log destination, or ``None``.
        log_level: ``"debug"``, ``"info"``, ``"warning"`` or ``"error"``.
        log_format: ``"text"`` or ``"json"`` (one object per line).
        admin_host, admin_port: the admin HTTP listener (``/metrics``, ``/health``,
            ``/ready``); ``admin_port`` 0 = none.
        shutdown_grace: seconds SIGTERM waits for connections to close (1001)
            and the storage to flush before the node is cancelled.
        queue_ttl: seconds after which queued envelopes expire.
        max_queue: most envelopes one device queue may hold.
        max_frame: largest accepted WebSocket message, bytes.
        max_envelope: largest envelope body, bytes (``None``: derived from ``max_frame``).
        link_ttl: seconds a linking mailbox lives at most (docs/protocol.md, "Linking").
        media_quota: most bytes of media blobs the node holds (docs/media.md).
        media_ttl: seconds after its last write when a media blob is deleted.
        media_upload_ttl: seconds after its last chunk when an unfinished upload is deleted.
        max_media_size: largest accepted media blob (encrypted file), bytes.
        keepalive_interval: seconds without a received message after which the
            node sends a WebSocket ping on a connection (0: never); its own
            outgoing peer links ping after as long a silence (a ``ping`` request).
        keepalive_timeout: seconds for the pong (or the peer's answer); without it
            the node ends the connection and frees the device (or reconnects).
        handshake_timeout: seconds a new connection has to authenticate
            (``auth``/``peer_auth``) or open a linking mailbox; then close 1008.
        max_pending_per_ip: most unauthenticated connections from one address
            (an IPv4 address or an IPv6 /64); more are refused (HTTP 503).
        max_connections: most connections of all kinds at once; more are refused (HTTP 503).
        max_connections_per_ip: most connections of all kinds at once from one address
            (authenticated ones included); more are refused (HTTP 503).
        max_mailboxes_per_ip: most linking mailboxes open at once from one
            address; more ``link_open`` get ``rate_limited``.
        max_mailboxes: most linking mailboxes open at once on the node; when full,
            they are shared fairly among addresses (:mod:`relay.services.linking`).
        max_pending: most unauthenticated connections in all; the rest of
            ``max_connections`` is reserved for authenticated devices, peers and
            linking devices (the oldest pending connection is evicted for a new one).
        otk_claim_burst: one-time keys one device hands out in a burst; then one
            per ``600 / otk_claim_burst`` seconds; claims beyond get its fallback key
            (:mod:`relay.services.claim_limits`). Claimers are limited by the
            ``claim_keys`` bucket of ``abuse`` only.
        key_file: where the signing key was read from (``None`` if not from a file).
        previous_cluster: the nodes before an unfinished reshape (``<cluster>.prev``;
            ``()`` if none): users are handed off from their old homes to the new ones
            (:mod:`relay.services.handoff`).
        abuse: quotas, rate limits, device count, registration policy
            (:class:`~relay.config.abuse.AbuseLimits`).
        tls_cert, tls_key: the node's TLS certificate chain and key (PEM); ``None``:
            plain ``ws://``, which needs ``allow_plain`` and a loopback ``host``.
        allow_plain: listen on plain ``ws://`` (loopback only) when there is no TLS.
        cluster_doc: the signed cluster description served to clients
            (``get_cluster``), or ``None`` (clients cannot pin this cluster).
    """

    id: str
    host: str
    port: int
    cluster: tuple[NodeInfo, ...]
    signing_key: nacl.signing.SigningKey
    storage: str
    log_file: Path | None = None
    log_level: str = "info"
    log_format: str = "text"
    admin_host: str = DEFAULT_ADMIN_HOST
    admin_port: int = 0
    shutdown_grace: float = DEFAULT_SHUTDOWN_GRACE
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
    max_connections_per_ip: int = DEFAULT_MAX_CONNECTIONS_PER_IP
    max_mailboxes_per_ip: int = DEFAULT_MAX_MAILBOXES_PER_IP
    max_mailboxes: int = DEFAULT_MAX_MAILBOXES
    max_pending: int = DEFAULT_MAX_PENDING
    otk_claim_burst: int = DEFAULT_OTK_CLAIM_BURST
    key_file: Path | None = None
    previous_cluster: tuple[NodeInfo, ...] = ()
    abuse: AbuseLimits = AbuseLimits()
    tls_cert: Path | None = None
    tls_key: Path | None = None
    allow_plain: bool = False
    cluster_doc: SignedCluster | None = None

    @property
    def node(self) -> NodeInfo:
        """This node's cluster entry (of the previous cluster for a node being removed
        by a reshape)."""
        for n in (*self.cluster, *self.previous_cluster):
            if n.id == self.id:
                return n
        raise ConfigError(f"node {self.id!r} is not in the cluster file")  # pragma: no cover

    def own_url(self, port: int) -> str:
        """This process's address: the first of the node's ``urls`` whose port is
        ``port`` (the bound port), else the node's first URL."""
        for url in self.node.urls:
            try:
                if urlsplit(url).port == port:
                    return url
            except ValueError:
                continue
        return self.node.url

    @property
    def admin_url(self) -> str | None:
        """``http://admin_host:admin_port``, or ``None`` without an admin listener."""
        if not self.admin_port:
            return None
        host = f"[{self.admin_host}]" if ":" in self.admin_host else self.admin_host
        return f"http://{host}:{self.admin_port}"
