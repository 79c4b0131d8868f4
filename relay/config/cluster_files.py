"""Writing the configuration files (with :mod:`tomli_w`), and laying out a local
cluster (``init-cluster``).

File formats: :mod:`relay.config`. Generated ``node.toml`` files hold every
setting of :class:`~relay.config.schema.NodeFile` with its value (defaults
included), and only paths relative to their own directory, so a data dir can
be moved or copied as a whole.
"""

from __future__ import annotations

import base64
import os
from pathlib import Path
from typing import Any

import msgspec
import nacl.signing
import tomli_w

from relay.config import (
    NODE_SETTINGS,
    ConfigError,
    NodeFile,
    load_cluster,
    load_key,
    read_toml,
)
from relay.config.ring import NodeInfo


def format_cluster(nodes: tuple[NodeInfo, ...] | list[NodeInfo]) -> str:
    """The text of a cluster file for ``nodes``: one ``[[node]]`` table each (tomli-w
    would write short ones as an inline array); ``urls`` for a node with several
    addresses, else ``url``."""
    return "\n".join(
        "[[node]]\n" + tomli_w.dumps({
            "id": n.id, **({"url": n.url} if len(n.urls) == 1 else {"urls": list(n.urls)}),
            "public_key": base64.b64encode(n.public_key).decode("ascii")})
        for n in nodes
    )


def format_node(fields: dict[str, Any]) -> str:
    """The text of a flat ``node.toml`` holding ``fields`` (str/int/float/bool values)."""
    return tomli_w.dumps(fields)


def node_file_fields(**settings: Any) -> dict[str, Any]:
    """Every setting of ``node.toml``, in file order: ``settings`` over the defaults.

    Raises:
        ConfigError: a required setting is missing or a value is invalid.
    """
    try:
        return msgspec.to_builtins(msgspec.convert(settings, NodeFile))
    except msgspec.ValidationError as exc:
        raise ConfigError(f"node.toml: {exc}") from None


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` via a temporary file and rename."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def write_key(path: Path, key: nacl.signing.SigningKey) -> None:
    """Write the 32-byte seed of ``key`` to ``path`` with mode 0600 (created exclusively).

    Raises:
        FileExistsError: ``path`` exists (a key is never overwritten). OSError: not written.
    """
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
        f"Rewriting it means that {'; '.join(consequences)}. Run with the arguments it was "
        "created with; to grow or shrink the cluster and move users with their queues, pass "
        "--reshape ('wa-relay cluster'); --reconfigure rewrites it without moving anyone "
        "(docs/operations.md, \"Reshaping a cluster\")."
    )


def default_admin_base_port(nodes: int, base_port: int) -> int:
    """The first admin port of a local cluster: right after the node ports
    (``nK`` listens on ``base_port + K - 1``, its admin on ``base_port + nodes + K - 1``)."""
    return base_port + nodes


def init_cluster(
    data_dir: str | os.PathLike[str], nodes: int, base_port: int, host: str = "127.0.0.1",
    *, reconfigure: bool = False, admin_base_port: int | None = None,
) -> list[Path]:
    """Create (or complete) a local cluster layout under ``data_dir``.

    Writes ``DIR/cluster.toml`` and ``DIR/nK/{node.toml,node.key}`` for
    K = 1..``nodes`` on ports ``base_port``..``base_port + nodes - 1``, admin
    listeners (loopback) on ``admin_base_port + K - 1`` (default
    :func:`default_admin_base_port`; 0 = none), storage ``lmdb://data`` and
    ``log_file = "node.log"`` (both relative to ``nK/``), and every other setting
    with its default. Directories are created 0700, keys 0600.

    Existing key files are kept, so a restart resumes with the same identities
    and data. An existing ``node.toml`` keeps its other settings; its id, host,
    port and admin port are updated (and missing settings added with their
    defaults) only if they differ. ``cluster.toml`` is rewritten only when its
    content would change.

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
    if admin_base_port is None:
        admin_base_port = default_admin_base_port(nodes, base_port)
    if admin_base_port and not 0 < admin_base_port <= 65535 - (nodes - 1):
        raise ConfigError("admin ports must be within 1..65535 (--admin-base-port 0: none)")
    root = Path(data_dir).resolve()
    if not reconfigure:
        check_existing_cluster(
            root, [(f"n{k}", f"ws://{host}:{base_port + k - 1}") for k in range(1, nodes + 1)])
    root.mkdir(parents=True, exist_ok=True, mode=0o700)
    infos: list[NodeInfo] = []
    node_files: list[Path] = []
    for k in range(1, nodes + 1):
        node_id, port = f"n{k}", base_port + k - 1
        node_dir = root / node_id
        node_dir.mkdir(exist_ok=True, mode=0o700)
        (node_dir / "data").mkdir(exist_ok=True, mode=0o700)
        key_path = node_dir / "node.key"
        if key_path.exists():
            key = load_key(key_path)
        else:
            key = nacl.signing.SigningKey.generate()
            write_key(key_path, key)
        infos.append(NodeInfo(node_id, f"ws://{host}:{port}", bytes(key.verify_key)))
        node_file = node_dir / "node.toml"
        node_files.append(node_file)
        _write_node_file(node_file, {
            "id": node_id, "host": host, "port": port,
            "admin_port": admin_base_port + k - 1 if admin_base_port else 0,
        })
    cluster_file = root / "cluster.toml"
    text = format_cluster(infos)
    if not cluster_file.exists() or cluster_file.read_text(encoding="utf-8") != text:
        write_text_atomic(cluster_file, text)
    return node_files


def _write_node_file(node_file: Path, wanted: dict[str, Any]) -> None:
    """Write ``node_file`` with ``wanted`` over its existing settings (or the local
    cluster's defaults), unless that changes nothing."""
    existing: dict[str, Any] = {}
    if node_file.exists():
        try:
            existing = read_toml(node_file)
        except ConfigError:
            existing = {}
    settings: dict[str, Any] = {
        "cluster": "../cluster.toml", "key_file": "node.key", "storage": "lmdb://data",
        "log_file": "node.log",
    }
    settings.update({k: v for k, v in existing.items() if k in NODE_SETTINGS})
    settings.update(wanted)
    text = format_node(node_file_fields(**settings))
    if not node_file.exists() or node_file.read_text(encoding="utf-8") != text:
        write_text_atomic(node_file, text)
