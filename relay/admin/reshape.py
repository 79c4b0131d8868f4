"""Reshaping a cluster (docs/operations.md, "Reshaping a cluster"): installing a new
cluster file beside the previous one, laying out a local cluster's reshape, and
watching the handoff until every node is done.

The previous cluster file is kept as ``<cluster file>.prev``
(:func:`relay.config.loading.previous_cluster_path`) while a reshape is unfinished;
nodes started with both files hand users over (:mod:`relay.services.handoff`), and
nodes listed only in the previous file drain, then stop.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import trio

from relay.config import ConfigError, NodeConfig, load_cluster, load_node_config, parse_node_file
from relay.config.cluster_files import init_cluster, write_text_atomic
from relay.config.loading import load_cluster_doc, previous_cluster_path
from relay.config.ring import NodeInfo, Ring
from relay.protocol import RemoteProtocolError
from relay.protocol.cluster import PinnedCluster

if TYPE_CHECKING:
    from relay.node import Node

WATCH_INTERVAL = 0.1  # seconds between looks at the nodes' handoff state
CLUSTER_POLL = 1.0
"""Seconds between looks of a running ``serve`` node at its cluster file."""


class ReshapeError(ConfigError):
    """A reshape cannot be started as asked (CLI exit code 2)."""


def _same_nodes(a: tuple[NodeInfo, ...], b: tuple[NodeInfo, ...]) -> bool:
    return Ring(a).version == Ring(b).version


def _signed_version(path: Path) -> tuple[bytes, int] | None:
    """``(cluster key, version)`` of a signed cluster file, ``None`` if it is unsigned.
    Raises ConfigError (a signature that does not verify)."""
    doc = load_cluster_doc(path)
    if doc is None:
        return None
    return doc.cluster_key, PinnedCluster.verify(doc).version


def install_cluster(cluster_path: Path, new_file: Path) -> bool:
    """Make ``new_file`` (as written, signature included) the cluster file
    ``cluster_path``, keeping the current file as ``<cluster_path>.prev`` for the handoff.

    Returns:
        ``False`` if ``cluster_path`` already lists the nodes of ``new_file`` (nothing
        changed).

    Raises:
        ReshapeError: an earlier reshape to another cluster is unfinished (its
            ``.prev`` file exists): it must be finished first; or the current file is
            signed and ``new_file`` is not signed by the same cluster key with a higher
            version (clients pinned to the key would refuse to follow users to new nodes).
        ConfigError: a file cannot be read or its signature does not verify.
        OSError: a file cannot be written.
    """
    current = load_cluster(cluster_path)
    new_nodes = load_cluster(new_file)
    if _same_nodes(current, new_nodes):
        return False
    prev = previous_cluster_path(cluster_path)
    if prev.exists():
        raise ReshapeError(
            f"{prev} exists: the reshape to the nodes of {cluster_path} is not finished. "
            "Let it finish (wa-relay status shows 'handoff done' on every node), then run "
            "wa-relay reshape --finish, or go on with the same cluster file.")
    was, will = _signed_version(cluster_path), _signed_version(new_file)
    if was is not None and (will is None or will[0] != was[0] or will[1] <= was[1]):
        raise ReshapeError(
            f"{cluster_path} is signed (version {was[1]}): sign {new_file} with the same "
            f"cluster key and a higher version first (wa-relay sign-cluster --cluster "
            f"{new_file} --key CLUSTER_KEY), or clients will not follow their homes")
    text = new_file.read_text(encoding="utf-8")
    tmp = prev.with_name(prev.name + ".tmp")
    shutil.copyfile(cluster_path, tmp)
    tmp.replace(prev)
    write_text_atomic(cluster_path, text)
    return True


def finish(cluster_path: Path) -> bool:
    """Forget the previous cluster file (the reshape is done); ``False`` if there was none."""
    prev = previous_cluster_path(cluster_path)
    if not prev.exists():
        return False
    prev.unlink()
    return True


def local_node_files(root: Path) -> list[Path]:
    """The ``node.toml`` of every node a local cluster under ``root`` runs: the nodes of
    ``cluster.toml``, then those only in ``cluster.toml.prev`` (being removed)."""
    ids = [n.id for n in load_cluster(root / "cluster.toml")]
    prev = previous_cluster_path(root / "cluster.toml")
    if prev.exists():
        ids += [n.id for n in load_cluster(prev) if n.id not in ids]
    return [root / node_id / "node.toml" for node_id in ids]


def prepare_local_reshape(
    root: Path, nodes: int, base_port: int, host: str, admin_base_port: int | None, *,
    tls: bool = True,
) -> tuple[int, int] | None:
    """Reshape the local cluster under ``root`` to ``nodes`` nodes (``--reshape``);
    ``tls`` as for :func:`~relay.config.cluster_files.init_cluster` (the new cluster
    file is signed again with the cluster's key, under a higher version).

    Admin ports default to ``base_port + max(old, new count)`` onwards while the
    reshape is unfinished (clear of every node port of both sizes).

    Returns:
        ``(old count, new count)`` if the cluster file changed (its old version is
        kept as ``cluster.toml.prev``), ``None`` if it already lists these nodes.

    Raises:
        ReshapeError: an unfinished reshape to another node count; ConfigError:
            unreadable files or bad arguments. OSError: files cannot be written.
    """
    cluster_file = root / "cluster.toml"
    old = load_cluster(cluster_file)
    prev = previous_cluster_path(cluster_file)
    wanted = [f"n{k}" for k in range(1, nodes + 1)]
    if [n.id for n in old] == wanted:
        if prev.exists() and admin_base_port is None:
            admin_base_port = base_port + max(len(load_cluster(prev)), nodes)
        init_cluster(root, nodes, base_port, host, admin_base_port=admin_base_port, tls=tls)
        return None
    if prev.exists():
        raise ReshapeError(
            f"a reshape to {len(old)} nodes is not finished ({prev} exists): run with "
            f"--nodes {len(old)} until it is done, then reshape again")
    shutil.copyfile(cluster_file, prev)  # removed nodes keep their files, ports and data
    if admin_base_port is None:  # clear of the node ports of both sizes
        admin_base_port = base_port + max(len(old), nodes)
    init_cluster(root, nodes, base_port, host, reconfigure=True,
                 admin_base_port=admin_base_port, tls=tls)
    return len(old), nodes


@dataclass
class ReshapeWatch:
    """Collects the nodes of a reshape (``on_node``) and reports when all are done."""

    cluster_file: Path
    nodes: list[Node] = field(default_factory=list)

    def on_node(self, node: Node) -> None:
        """:func:`relay.node.serve_node`'s ``on_node`` hook."""
        self.nodes.append(node)

    async def wait(self, expected: int, report: Callable[[str], None]) -> None:
        """Wait until ``expected`` nodes started and each one's handoff is done, then
        ``report`` what moved and forget the previous cluster file. A user whose
        handoff is stuck (its new home refused it for good) is reported once meanwhile."""
        stuck: set[tuple[str, str]] = set()
        while len(self.nodes) < expected or not all(n.handoff.done for n in self.nodes):
            for n in self.nodes:
                for r in n.handoff.refusals.stuck():
                    if (n.id, r.user_id) not in stuck:
                        stuck.add((n.id, r.user_id))
                        report(f"handoff {n.id}: {r.user_id} to {r.peer} STUCK, refused "
                               f"{r.attempts} times ({r.code}: {r.message or '-'}); the "
                               "user stays served by its old home: fix the cause, then "
                               "restart the cluster to retry (docs/operations.md, 'A stuck "
                               "handoff')")
            await trio.sleep(WATCH_INTERVAL)
        users = sum(n.handoff.stats.users for n in self.nodes)
        envelopes = sum(n.handoff.stats.envelopes for n in self.nodes)
        size = sum(n.handoff.stats.bytes for n in self.nodes)
        for n in self.nodes:
            s = n.handoff.stats
            if s.users or s.users_in:
                report(f"handoff {n.id}: {s.users} users out ({s.envelopes} envelopes, "
                       f"{s.bytes} bytes), {s.users_in} users in")
        finish(self.cluster_file)
        report(f"reshaped: moved {users} users, {envelopes} envelopes, {size} bytes")



def _not_followed(running: NodeConfig, fresh: NodeConfig) -> str | None:
    """Why clients pinned to the description ``running`` serves would refuse the one
    of ``fresh`` (unsigned while the served one is signed, another cluster key, a
    version not above the served one), ``None`` if they would follow it (as
    :func:`install_cluster` checks)."""
    if running.cluster_doc is None:
        return None
    if fresh.cluster_doc is None:
        return "it is not signed and the served description is"
    try:
        PinnedCluster.verify(running.cluster_doc).newer(fresh.cluster_doc)
    except RemoteProtocolError as exc:
        return exc.message
    return None


def _file_state(path: Path) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return (st.st_ino, st.st_mtime_ns, st.st_size)


async def watch_cluster_file(
    config_path: Path, running: NodeConfig, poll: float = CLUSTER_POLL, *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> NodeConfig:
    """Wait until ``wa-relay reshape --cluster`` installed a new cluster file for the
    node of ``config_path`` (the file lists other nodes than the ring ``running``
    serves, and its ``.prev`` is that ring), and return the node's config loaded anew
    (with the previous file, for the handoff).

    A file that changed but does not load, lists the same nodes (a new signature,
    ``--finish``), other nodes without that ``.prev`` (a hand edit: restart the
    node to use it), or, while the served description is signed, is not signed by
    the same cluster key with a higher version (clients would not follow it) is
    logged and otherwise ignored: the node keeps serving. Looks
    every ``poll`` seconds (one ``stat`` per file) until cancelled; ``task_status``
    is started once it has taken its first look.

    Raises:
        ConfigError: ``config_path`` cannot be read at the start.
    """
    cluster_path = await trio.to_thread.run_sync(
        lambda: config_path.resolve().parent / parse_node_file(config_path).cluster)
    paths = (cluster_path, previous_cluster_path(cluster_path))
    version = Ring(running.cluster).version
    log = logging.getLogger(f"wa_relay.node.{running.id}")  # into the node's log file
    seen = [await trio.to_thread.run_sync(_file_state, p) for p in paths]
    task_status.started()
    while True:
        await trio.sleep(poll)
        now = [await trio.to_thread.run_sync(_file_state, p) for p in paths]
        if now == seen:
            continue
        seen = now
        try:
            fresh = await trio.to_thread.run_sync(load_node_config, config_path)
        except (ConfigError, OSError) as exc:
            log.error("cluster file %s changed but cannot be used (still serving ring %s): "
                      "%s", cluster_path, version[:12], exc)
            continue
        if Ring(fresh.cluster).version == version:
            continue
        if not fresh.previous_cluster or Ring(fresh.previous_cluster).version != version:
            log.warning("cluster file %s lists other nodes, but not as a reshape of the ring "
                        "served (wa-relay reshape --cluster keeps that as .prev): restart "
                        "the node to use it", cluster_path)
            continue
        why = _not_followed(running, fresh)
        if why is not None:
            log.error("cluster file %s refused (still serving ring %s): %s; install one "
                      "signed by the cluster key with a higher version (wa-relay "
                      "sign-cluster, wa-relay reshape --cluster)", cluster_path, version[:12],
                      why)
            continue
        log.info("cluster file %s lists new nodes (ring %s -> %s): restarting the node "
                 "to hand users over", cluster_path, version[:12],
                 Ring(fresh.cluster).version[:12])
        return fresh
