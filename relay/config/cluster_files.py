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
    DEFAULT_MAX_FRAME,
    NODE_SETTINGS,
    ConfigError,
    NodeFile,
    cluster_description,
    load_cluster,
    load_key,
    read_toml,
)
from relay.config.certs import write_self_signed
from relay.config.ring import NodeInfo
from relay.protocol.cluster import cluster_key_text, is_loopback, sign_cluster

CLUSTER_KEY_FILE = "cluster.key"
"""The local cluster's cluster key (Ed25519 seed, 0600) beside ``cluster.toml``."""


def format_cluster(nodes: tuple[NodeInfo, ...] | list[NodeInfo],
                   signed_by: nacl.signing.SigningKey | None = None, *, version: int = 1,
                   max_frame: int = DEFAULT_MAX_FRAME, max_envelope: int = 0) -> str:
    """The text of a cluster file for ``nodes``: one ``[[node]]`` table each (tomli-w
    would write short ones as an inline array); ``urls`` for a node with several
    addresses, else ``url``. With ``signed_by`` (the cluster key), first the signed
    description's fields: ``version``, ``max_frame``, ``max_envelope``,
    ``cluster_key`` and the ``signature`` over all of it
    (:func:`relay.config.load_cluster_doc` checks it)."""
    head = ""
    if signed_by is not None:
        doc = sign_cluster(signed_by, cluster_description(nodes, version, max_frame,
                                                          max_envelope))
        head = tomli_w.dumps({
            "version": version, "max_frame": max_frame, "max_envelope": max_envelope,
            "cluster_key": cluster_key_text(doc.cluster_key),
            "signature": base64.b64encode(doc.signature).decode("ascii"),
        }) + "\n"
    return head + "\n".join(
        "[[node]]\n" + tomli_w.dumps({
            "id": n.id, **({"url": n.url} if len(n.urls) == 1 else {"urls": list(n.urls)}),
            "public_key": base64.b64encode(n.public_key).decode("ascii")})
        for n in nodes
    )


def sign_cluster_file(cluster_file: Path, cluster_key: nacl.signing.SigningKey, *,
                      version: int | None = None, max_frame: int | None = None,
                      max_envelope: int | None = None) -> int:
    """Sign ``cluster_file`` (again) with ``cluster_key``: its nodes, the size budget
    (kept unless given; default :data:`DEFAULT_MAX_FRAME`/0) and ``version`` (default:
    one more than the file's). Returns the version written.

    Raises:
        ConfigError: an unreadable or invalid file, or a version that does not grow.
    """
    nodes = load_cluster(cluster_file)
    data = read_toml(cluster_file)
    old = int(data.get("version", 0))
    version = old + 1 if version is None else version
    if version <= old:
        raise ConfigError(f"{cluster_file}: version {version} does not grow (it is {old})")
    text = format_cluster(
        nodes, cluster_key, version=version,
        max_frame=max_frame or int(data.get("max_frame") or DEFAULT_MAX_FRAME),
        max_envelope=int(data.get("max_envelope", 0)) if max_envelope is None else max_envelope)
    write_text_atomic(cluster_file, text)
    return version


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


def _no_scheme(url: str) -> str:
    """``host:port`` of a ws(s) URL: switching a local cluster between ws:// and wss://
    moves nobody."""
    return url.split("://", 1)[-1]


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
        # every address: a node given several by hand is not silently cut back to one
        existing = [(n.id, " ".join(n.urls)) for n in load_cluster(cluster_file)]
    except ConfigError as exc:
        raise ClusterMismatch(
            f"{exc}\nFix the file, or pass --reconfigure to write a new one."
        ) from exc
    if [(i, _no_scheme(u)) for i, u in existing] == [(i, _no_scheme(u)) for i, u in wanted]:
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
    *, reconfigure: bool = False, admin_base_port: int | None = None, tls: bool = True,
) -> list[Path]:
    """Create (or complete) a local cluster layout under ``data_dir``.

    Writes ``DIR/cluster.toml`` and ``DIR/nK/{node.toml,node.key}`` for
    K = 1..``nodes`` on ports ``base_port``..``base_port + nodes - 1``, admin
    listeners (loopback) on ``admin_base_port + K - 1`` (default
    :func:`default_admin_base_port`; 0 = none), storage ``lmdb://data`` and
    ``log_file = "node.log"`` (both relative to ``nK/``), and every other setting
    with its default. Directories are created 0700, keys 0600.

    Trust (docs/operations.md, "TLS and the cluster key"): a cluster key
    ``DIR/cluster.key`` (made once) signs ``cluster.toml`` (the description that
    clients pin; its ``version`` grows whenever its content changes). With ``tls``
    (the default) every node gets a self-signed certificate ``nK/tls.{crt,key}`` and a
    ``wss://`` URL; without, plain ``ws://`` with ``allow_plain`` (loopback hosts only).

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
        ConfigError: bad arguments (plain ``ws://`` on a host that is not loopback), or
            an unreadable existing key file.
    """
    if nodes < 1 or not 0 < base_port <= 65535 - (nodes - 1):
        raise ConfigError("need --nodes >= 1 and ports within 1..65535")
    if admin_base_port is None:
        admin_base_port = default_admin_base_port(nodes, base_port)
    if admin_base_port and not 0 < admin_base_port <= 65535 - (nodes - 1):
        raise ConfigError("admin ports must be within 1..65535 (--admin-base-port 0: none)")
    root = Path(data_dir).resolve()
    scheme = "wss" if tls else "ws"
    if not tls and not is_loopback(host):
        raise ConfigError(f"plain ws:// (--insecure-loopback) needs a loopback --host, not {host!r}")
    if not reconfigure:
        check_existing_cluster(
            root, [(f"n{k}", f"{scheme}://{host}:{base_port + k - 1}")
                   for k in range(1, nodes + 1)])
    root.mkdir(parents=True, exist_ok=True, mode=0o700)
    cluster_key_path = root / CLUSTER_KEY_FILE
    if cluster_key_path.exists():
        cluster_key = load_key(cluster_key_path)
    else:
        cluster_key = nacl.signing.SigningKey.generate()
        write_key(cluster_key_path, cluster_key)
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
        infos.append(NodeInfo(node_id, f"{scheme}://{host}:{port}", bytes(key.verify_key)))
        transport: dict[str, Any] = {"tls_cert": "", "tls_key": "", "allow_plain": True}
        if tls:
            if not (node_dir / "tls.key").exists():
                write_self_signed(node_dir / "tls.crt", node_dir / "tls.key", host, node_id)
            transport = {"tls_cert": "tls.crt", "tls_key": "tls.key", "allow_plain": False}
        node_file = node_dir / "node.toml"
        node_files.append(node_file)
        _write_node_file(node_file, {
            "id": node_id, "host": host, "port": port,
            "admin_port": admin_base_port + k - 1 if admin_base_port else 0, **transport,
        })
    _write_signed_cluster(root / "cluster.toml", infos, cluster_key, node_files[0])
    return node_files


def _write_signed_cluster(cluster_file: Path, infos: list[NodeInfo],
                          cluster_key: nacl.signing.SigningKey, first_node: Path) -> None:
    """Write ``cluster_file`` signed by ``cluster_key``, with the size budget of
    ``first_node``; its version grows only when its content changes."""
    budget = read_toml(first_node)
    max_frame = int(budget.get("max_frame", DEFAULT_MAX_FRAME))
    max_envelope = int(budget.get("max_envelope", 0))
    version = 1
    if cluster_file.exists():
        try:
            old = read_toml(cluster_file)
        except ConfigError:
            old = {}
        version = int(old.get("version", 0)) or 1
        same = format_cluster(infos, cluster_key, version=version, max_frame=max_frame,
                              max_envelope=max_envelope)
        if cluster_file.read_text(encoding="utf-8") == same:
            return
        if old.get("version"):
            version += 1
    write_text_atomic(cluster_file, format_cluster(
        infos, cluster_key, version=version, max_frame=max_frame, max_envelope=max_envelope))


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
