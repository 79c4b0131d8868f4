"""The schema of ``node.toml`` and ``cluster.toml``, as :mod:`msgspec` structs.

Every setting of a node file is one field of :class:`NodeFile`, with its type,
bounds and default; docs/operations.md documents each one (a test checks that
the two agree) and :func:`relay.config.cluster_files.init_cluster` writes every one,
with its default, into the files it generates. Unknown keys are refused
(``forbid_unknown_fields``); :mod:`relay.config.loading` names the closest
known key in the error.

Why msgspec rather than pydantic: it validates a TOML-parsed dict into typed,
frozen structs with bounds (``Meta(ge=..)``), refuses unknown fields, converts
environment strings with ``strict=False`` field by field, and is one small
compiled wheel with no dependencies (pydantic brings pydantic-core and
typing-extensions, and its models are heavier than this flat file needs).
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
from msgspec import Meta

from .abuse import DEFAULT_ABUSE as _A

NonEmpty = Annotated[str, Meta(min_length=1)]
Port = Annotated[int, Meta(ge=0, le=65535)]
Positive = Annotated[float, Meta(gt=0)]
Count = Annotated[int, Meta(ge=1)]
Bytes = Annotated[int, Meta(ge=0)]

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
DEFAULT_MAX_CONNECTIONS_PER_IP = 512
DEFAULT_MAX_MAILBOXES_PER_IP = 8
DEFAULT_MAX_MAILBOXES = 1000
DEFAULT_MAX_PENDING = 5_000
DEFAULT_OTK_CLAIM_BURST = 30
DEFAULT_ADMIN_HOST = "127.0.0.1"
DEFAULT_SHUTDOWN_GRACE = 10.0

Fraction = Annotated[float, Meta(gt=0, le=1)]
Rate = Annotated[float, Meta(gt=0)]
Registration = Literal["open", "invite", "closed"]

LogLevel = Literal["debug", "info", "warning", "error"]
LogFormat = Literal["text", "json"]


class NodeFile(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, frozen=True):
    """``node.toml`` as written (paths unresolved). Field docs: docs/operations.md.

    Required: ``id``, ``port``, ``cluster``, ``key_file``, ``storage``. An empty
    ``log_file`` means none; ``admin_port = 0`` means no admin listener;
    ``max_envelope = 0`` means "derived from ``max_frame``" (256 KiB at most).
    """

    id: NonEmpty
    host: NonEmpty = "127.0.0.1"
    port: Port
    cluster: NonEmpty
    key_file: NonEmpty
    storage: NonEmpty
    log_file: str = ""
    log_level: LogLevel = "info"
    log_format: LogFormat = "text"
    admin_host: NonEmpty = DEFAULT_ADMIN_HOST
    admin_port: Port = 0
    shutdown_grace: Positive = DEFAULT_SHUTDOWN_GRACE
    queue_ttl: Positive = DEFAULT_QUEUE_TTL
    max_queue: Count = DEFAULT_MAX_QUEUE
    max_frame: Annotated[int, Meta(ge=1024)] = DEFAULT_MAX_FRAME
    max_envelope: Bytes = 0
    link_ttl: Positive = DEFAULT_LINK_TTL
    media_quota: Bytes = DEFAULT_MEDIA_QUOTA
    media_ttl: Positive = DEFAULT_MEDIA_TTL
    media_upload_ttl: Positive = DEFAULT_MEDIA_UPLOAD_TTL
    max_media_size: Bytes = DEFAULT_MAX_MEDIA_SIZE
    handshake_timeout: Positive = DEFAULT_HANDSHAKE_TIMEOUT
    keepalive_interval: Annotated[float, Meta(ge=0)] = DEFAULT_KEEPALIVE_INTERVAL
    keepalive_timeout: Positive = DEFAULT_KEEPALIVE_TIMEOUT
    max_pending_per_ip: Count = DEFAULT_MAX_PENDING_PER_IP
    max_connections: Count = DEFAULT_MAX_CONNECTIONS
    max_connections_per_ip: Count = DEFAULT_MAX_CONNECTIONS_PER_IP
    max_mailboxes_per_ip: Count = DEFAULT_MAX_MAILBOXES_PER_IP
    max_mailboxes: Count = DEFAULT_MAX_MAILBOXES
    max_pending: Count = DEFAULT_MAX_PENDING
    # abuse limits (relay.config.abuse; docs/operations.md, "Abuse limits")
    queue_device_bytes: Count = _A["queue_device_bytes"]
    queue_account_bytes: Count = _A["queue_account_bytes"]
    queue_sender_bytes: Count = _A["queue_sender_bytes"]
    queue_peer_bytes: Count = _A["queue_peer_bytes"]
    queue_sender_share: Fraction = _A["queue_sender_share"]
    queue_peer_share: Fraction = _A["queue_peer_share"]
    queue_strangers_share: Fraction = _A["queue_strangers_share"]
    quota_retry_after: Positive = _A["quota_retry_after"]
    max_devices: Annotated[int, Meta(ge=1, le=1024)] = _A["max_devices"]
    registration: Registration = _A["registration"]
    invite_ttl: Positive = _A["invite_ttl"]
    watchers_per_user: Count = _A["watchers_per_user"]
    watching_per_account: Count = _A["watching_per_account"]
    watcher_ttl: Positive = _A["watcher_ttl"]
    media_account_quota: Bytes = _A["media_account_quota"]
    outbox_sender_bytes: Count = _A["outbox_sender_bytes"]
    outbox_total_bytes: Count = _A["outbox_total_bytes"]
    send_rate: Rate = _A["send_rate"]
    send_burst: Rate = _A["send_burst"]
    send_bytes_rate: Rate = _A["send_bytes_rate"]
    send_bytes_burst: Rate = _A["send_bytes_burst"]
    claim_keys_rate: Rate = _A["claim_keys_rate"]
    claim_keys_burst: Rate = _A["claim_keys_burst"]
    get_devices_rate: Rate = _A["get_devices_rate"]
    get_devices_burst: Rate = _A["get_devices_burst"]
    upload_keys_rate: Rate = _A["upload_keys_rate"]
    upload_keys_burst: Rate = _A["upload_keys_burst"]
    put_devices_rate: Rate = _A["put_devices_rate"]
    put_devices_burst: Rate = _A["put_devices_burst"]
    link_open_rate: Rate = _A["link_open_rate"]
    link_open_burst: Rate = _A["link_open_burst"]
    link_miss_rate: Rate = _A["link_miss_rate"]
    link_miss_burst: Rate = _A["link_miss_burst"]
    media_upload_rate: Rate = _A["media_upload_rate"]
    media_upload_burst: Rate = _A["media_upload_burst"]
    account_create_rate: Rate = _A["account_create_rate"]
    account_create_burst: Rate = _A["account_create_burst"]
    peer_forward_rate: Rate = _A["peer_forward_rate"]
    peer_forward_burst: Rate = _A["peer_forward_burst"]
    address_rate_factor: Annotated[float, Meta(ge=1)] = _A["address_rate_factor"]
    otk_claim_burst: Count = DEFAULT_OTK_CLAIM_BURST
    tls_cert: str = ""
    tls_key: str = ""
    allow_plain: bool = False


class ClusterNode(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """One ``[[node]]`` of ``cluster.toml``: id, ``ws://``/``wss://`` URL, and the
    standard base64 of its 32-byte Ed25519 public key. A node served by several
    processes lists every address in ``urls`` (``url``, if also given, must be its
    first entry); at least one of the two is required."""

    id: NonEmpty
    public_key: NonEmpty
    url: NonEmpty | None = None
    urls: list[NonEmpty] | None = None


class ClusterFile(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """``cluster.toml``: at least one ``[[node]]``, and the signed cluster description's
    fields (docs/operations.md, "Cluster key"): ``version`` (0: not signed),
    ``max_frame``/``max_envelope`` (the size budget it announces), ``cluster_key``
    (``wa-cluster-...``) and ``signature`` (standard base64)."""

    node: Annotated[list[ClusterNode], Meta(min_length=1)]
    version: Annotated[int, Meta(ge=0)] = 0
    max_frame: Annotated[int, Meta(ge=0)] = 0
    max_envelope: Bytes = 0
    cluster_key: str = ""
    signature: str = ""


NODE_SETTINGS: tuple[str, ...] = tuple(f.name for f in msgspec.structs.fields(NodeFile))
"""Every key ``node.toml`` may hold, in file order."""
