"""Reshaping a cluster (docs/operations.md, "Reshaping a cluster"): installing a new
cluster file beside the previous one, laying out a local cluster's reshape, and
watching the handoff until every node is done.

The previous cluster file is kept as ``<cluster file>.prev``
(:func:`relay.config.loading.previous_cluster_path`) while a reshape is unfinished;
nodes started with both files hand users over (:mod:`relay.services.handoff`), and
nodes listed only in the previous file drain, then stop.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import trio

from relay.config import ConfigError, load_cluster
from relay.config.cluster_files import format_cluster, init_cluster, write_text_atomic
from relay.config.loading import previous_cluster_path
from relay.config.ring import NodeInfo, Ring

if TYPE_CHECKING:
    from relay.node import Node

WATCH_INTERVAL = 0.1  # seconds between looks at the nodes' handoff state


class ReshapeError(ConfigError):
    """A reshape cannot be started as asked (CLI exit code 2)."""


def _same_nodes(a: tuple[NodeInfo, ...], b: tuple[NodeInfo, ...]) -> bool:
    return Ring(a).version == Ring(b).version


def install_cluster(cluster_path: Path, new_nodes: tuple[NodeInfo, ...]) -> bool:
    """Make ``new_nodes`` the cluster of ``cluster_path``, keeping the current file as
    ``<cluster_path>.prev`` for the handoff.

    Returns:
        ``False`` if ``cluster_path`` already lists ``new_nodes`` (nothing changed).

    Raises:
        ReshapeError: an earlier reshape to another cluster is unfinished (its
            ``.prev`` file exists): it must be finished first.
        ConfigError: a file cannot be read. OSError: a file cannot be written.
    """
    current = load_cluster(cluster_path)
    if _same_nodes(current, new_nodes):
        return False
    prev = previous_cluster_path(cluster_path)
    if prev.exists():
        raise ReshapeError(
            f"{prev} exists: the reshape to the nodes of {cluster_path} is not finished. "
            "Let it finish (wa-relay status shows 'handoff done' on every node), then run "
            "wa-relay reshape --finish, or go on with the same cluster file.")
    tmp = prev.with_name(prev.name + ".tmp")
    shutil.copyfile(cluster_path, tmp)
    tmp.replace(prev)
    write_text_atomic(cluster_path, format_cluster(list(new_nodes)))
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
    root: Path, nodes: int, base_port: int, host: str, admin_base_port: int | None,
) -> tuple[int, int] | None:
    """Reshape the local cluster under ``root`` to ``nodes`` nodes (``--reshape``).

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
        init_cluster(root, nodes, base_port, host, admin_base_port=admin_base_port)
        return None
    if prev.exists():
        raise ReshapeError(
            f"a reshape to {len(old)} nodes is not finished ({prev} exists): run with "
            f"--nodes {len(old)} until it is done, then reshape again")
    shutil.copyfile(cluster_file, prev)  # removed nodes keep their files, ports and data
    if admin_base_port is None:  # clear of the node ports of both sizes
        admin_base_port = base_port + max(len(old), nodes)
    init_cluster(root, nodes, base_port, host, reconfigure=True,
                 admin_base_port=admin_base_port)
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
        ``report`` what moved and forget the previous cluster file."""
        while len(self.nodes) < expected or not all(n.handoff.done for n in self.nodes):  # noqa: ASYNC110 - many nodes, no single event
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

