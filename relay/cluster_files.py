"""Writing the configuration files, and laying out a local cluster (``init-cluster``).

File formats: :mod:`relay.config`. Strings are emitted as JSON strings, which
are valid TOML basic strings, so no TOML writer is needed.
"""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path
from typing import Any

import nacl.signing

from .config import (
    DEFAULT_MAX_FRAME,
    DEFAULT_MAX_QUEUE,
    DEFAULT_QUEUE_TTL,
    ConfigError,
    load_cluster,
    load_key,
    read_toml,
)
from .ring import NodeInfo


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):  # pragma: no cover - not used by our files
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return json.dumps(str(value))


def format_cluster(nodes: tuple[NodeInfo, ...] | list[NodeInfo]) -> str:
    """The text of a cluster file for ``nodes``."""
    parts = []
    for n in nodes:
        key = base64.b64encode(n.public_key).decode("ascii")
        parts.append(
            f"[[node]]\nid = {_toml_value(n.id)}\nurl = {_toml_value(n.url)}\n"
            f"public_key = {_toml_value(key)}\n"
        )
    return "\n".join(parts)


def format_node(fields: dict[str, Any]) -> str:
    """The text of a flat ``node.toml`` holding ``fields`` (str/int/float values)."""
    return "".join(f"{k} = {_toml_value(v)}\n" for k, v in fields.items())


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` via a temporary file and rename."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def write_key(path: Path, key: nacl.signing.SigningKey) -> None:
    """Write the 32-byte seed of ``key`` to ``path`` with mode 0600 (created exclusively)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(bytes(key))


class ClusterMismatch(ConfigError):
    """The data dir already holds a cluster whose nodes or URLs differ from the
    arguments (CLI exit code 2; ``--reconfigure`` rewrites it anyway)."""


def _describe_nodes(nodes: list[tuple[str, str]]) -> str:
    return ", ".join(f"{node_id} {url}" for node_id, url in nodes)


def check_existing_cluster(root: Path, wanted: list[tuple[str, str]]) -> None:
    """Refuse to change the cluster file already under ``root``.

    Args:
        root: the data dir. wanted: ``(node id, url)`` of every node the
            arguments describe, in order.

    Raises:
        ClusterMismatch: ``root/cluster.toml`` exists and lists other nodes or
            URLs than ``wanted``, or cannot be read.
    """
    cluster_file = root / "cluster.toml"
    if not cluster_file.exists():
        return
    try:
        existing = [(n.id, n.url) for n in load_cluster(cluster_file)]
    except ConfigError as exc:
        raise ClusterMismatch(
            f"{exc}\nFix the file, or pass --reconfigure to write a new one."
        ) from exc
    if existing == wanted:
        return
    removed = [node_id for node_id, _ in existing if node_id not in dict(wanted)]
    consequences = ["users move to other home nodes, and their queued messages stay behind"]
    if removed:
        consequences.append(f"the queues of {', '.join(removed)} are no longer served")
    raise ClusterMismatch(
        f"{cluster_file} already describes another cluster:\n"
        f"  existing:  {_describe_nodes(existing)}\n"
        f"  arguments: {_describe_nodes(wanted)}\n"
        f"Changing it means that {'; '.join(consequences)}. Run with the arguments it was "
        "created with, or pass --reconfigure to rewrite it anyway (docs/operations.md)."
    )


def init_cluster(
    data_dir: str | os.PathLike[str], nodes: int, base_port: int, host: str = "127.0.0.1",
    *, reconfigure: bool = False,
) -> list[Path]:
    """Create (or complete) a local cluster layout under ``data_dir``.

    Writes ``DIR/cluster.toml`` and ``DIR/nK/{node.toml,node.key}`` for
    K = 1..``nodes`` on ports ``base_port``..``base_port + nodes - 1``, with
    storage ``lmdb:///<abs DIR>/nK/data`` and ``log_file = "node.log"``.
    Existing key files are kept, so a restart resumes with the same identities
    and data; an existing ``node.toml`` is kept when its id, host and port
    match, and ``cluster.toml`` is rewritten only when its content would change.

    An existing ``cluster.toml`` listing other node ids or URLs than the
    arguments is refused before anything is written (a different ``nodes``
    orphans queues and moves users; a different ``base_port`` or ``host``
    changes stored URLs), unless ``reconfigure`` is true.

    Returns:
        The paths of the ``node.toml`` files, in node order.

    Raises:
        ClusterMismatch: see above (a :class:`ConfigError`).
        ConfigError: bad arguments, or an unreadable existing key file.
    """
    if nodes < 1 or not 0 < base_port <= 65535 - (nodes - 1):
        raise ConfigError("need --nodes >= 1 and ports within 1..65535")
    root = Path(data_dir).resolve()
    if not reconfigure:
        check_existing_cluster(
            root, [(f"n{k}", f"ws://{host}:{base_port + k - 1}") for k in range(1, nodes + 1)])
    root.mkdir(parents=True, exist_ok=True)
    infos: list[NodeInfo] = []
    node_files: list[Path] = []
    for k in range(1, nodes + 1):
        node_id, port = f"n{k}", base_port + k - 1
        node_dir = root / node_id
        (node_dir / "data").mkdir(parents=True, exist_ok=True)
        key_path = node_dir / "node.key"
        if key_path.exists():
            key = load_key(key_path)
        else:
            key = nacl.signing.SigningKey.generate()
            write_key(key_path, key)
        infos.append(NodeInfo(node_id, f"ws://{host}:{port}", bytes(key.verify_key)))
        node_file = node_dir / "node.toml"
        node_files.append(node_file)
        if node_file.exists():
            try:
                existing = read_toml(node_file)
            except ConfigError:
                existing = {}
            if (existing.get("id"), existing.get("host", "127.0.0.1"), existing.get("port")) == (
                node_id, host, port
            ):
                continue
        write_text_atomic(node_file, format_node({
            "id": node_id, "host": host, "port": port, "cluster": "../cluster.toml",
            "key_file": "node.key", "storage": f"lmdb://{node_dir / 'data'}",
            "log_file": "node.log", "queue_ttl": DEFAULT_QUEUE_TTL,
            "max_queue": DEFAULT_MAX_QUEUE, "max_frame": DEFAULT_MAX_FRAME,
        }))
    cluster_file = root / "cluster.toml"
    text = format_cluster(infos)
    if not cluster_file.exists() or cluster_file.read_text(encoding="utf-8") != text:
        write_text_atomic(cluster_file, text)
    return node_files
