"""Node and cluster configuration files (TOML): schema, loading, defaults.

``cluster.toml`` (the same file on every node)::

    [[node]]
    id = "n1"
    url = "ws://127.0.0.1:7400"
    public_key = "<standard base64 of the 32-byte Ed25519 public key>"

A node served by several processes over one database lists every address instead:
``urls = ["ws://10.0.0.1:7400", "ws://10.0.0.2:7400"]`` (docs/operations.md,
"One home, several processes").

``node.toml`` (one per node; every path is relative to its directory): the
settings of :class:`~relay.config.schema.NodeFile`, all documented with their
defaults in docs/operations.md ("Node settings"), for example::

    id = "n1"
    port = 7400
    cluster = "../cluster.toml"
    key_file = "node.key"          # 32-byte raw Ed25519 seed, mode 0600
    storage = "lmdb://data"        # relative to this file's directory
    log_file = "node.log"
    admin_port = 7403              # /metrics, /health, /ready on admin_host (loopback)

Modules: :mod:`.schema` (msgspec structs, defaults), :mod:`.model`
(:class:`NodeConfig`, :class:`ConfigError`), :mod:`.loading` (reading files,
``WA_RELAY_*`` environment overrides, path resolution). :mod:`relay.config.cluster_files`
writes the files and lays out a local cluster. Every problem raises
:class:`ConfigError` with a message naming the file and the key; the CLI turns
it into exit code 2.
"""

from __future__ import annotations

from typing import Any

from .loading import (
    ENV_PREFIX,
    env_overrides,
    load_cluster,
    load_key,
    load_node_config,
    parse_node_file,
    read_toml,
    resolve_storage_url,
)
from .model import ConfigError, NodeConfig
from .schema import (
    DEFAULT_HANDSHAKE_TIMEOUT,
    DEFAULT_LINK_TTL,
    DEFAULT_MAX_CONNECTIONS,
    DEFAULT_MAX_FRAME,
    DEFAULT_MAX_MAILBOXES_PER_IP,
    DEFAULT_MAX_MEDIA_SIZE,
    DEFAULT_MAX_PENDING_PER_IP,
    DEFAULT_MAX_QUEUE,
    DEFAULT_MEDIA_QUOTA,
    DEFAULT_MEDIA_TTL,
    DEFAULT_MEDIA_UPLOAD_TTL,
    DEFAULT_QUEUE_TTL,
    DEFAULT_SHUTDOWN_GRACE,
    NODE_SETTINGS,
    NodeFile,
)

__all__ = [
    "DEFAULT_HANDSHAKE_TIMEOUT", "DEFAULT_LINK_TTL", "DEFAULT_MAX_CONNECTIONS", "DEFAULT_MAX_FRAME",
    "DEFAULT_MAX_MAILBOXES_PER_IP", "DEFAULT_MAX_MEDIA_SIZE", "DEFAULT_MAX_PENDING_PER_IP",
    "DEFAULT_MAX_QUEUE", "DEFAULT_MEDIA_QUOTA", "DEFAULT_MEDIA_TTL", "DEFAULT_MEDIA_UPLOAD_TTL",
    "DEFAULT_QUEUE_TTL", "DEFAULT_SHUTDOWN_GRACE", "ENV_PREFIX", "NODE_SETTINGS", "ConfigError",
    "NodeConfig", "NodeFile", "env_overrides", "load_cluster", "load_key", "load_node_config",
    "parse_node_file", "read_toml", "resolve_storage_url",
]


def __getattr__(name: str) -> Any:
    """``init_cluster`` and the file writers live in :mod:`relay.config.cluster_files`;
    importing them from here keeps working."""
    if name in ("init_cluster", "ClusterMismatch", "format_cluster", "format_node",
                "write_text_atomic", "write_key"):
        from relay.config import cluster_files

        return getattr(cluster_files, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
