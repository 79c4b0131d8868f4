"""Real ``wa-relay serve`` processes behind the proxies of :mod:`faults.proxy`.

``wa-relay init-cluster`` lays the cluster out (node.toml, node.key, data/ per
node, ports ``base .. base+N-1``); then the cluster file is rewritten so that
every node's URL is its proxy's address. Nodes still listen on their own
ports; every node reads the same cluster file (the ring version covers the
URLs), so peers and clients all reach a node through its proxy.

Nodes are started with :class:`relay.testing.LoggedProcess` (stdout and
stderr appended to ``logs/``, across restarts); its blocking calls run in
worker threads.
"""

from __future__ import annotations

import signal
import time
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import trio

from relay.config import load_cluster, load_key
from relay.config.cluster_files import (
    CLUSTER_KEY_FILE,
    format_cluster,
    format_node,
    sign_cluster_file,
    write_text_atomic,
)
from relay.config.ring import NodeInfo
from relay.testing import LoggedProcess, child_env, file_tail, free_base_port, tool

from .proxy import Network

READY_TIMEOUT = 30.0  # seconds for a node to print its ready line
STOP_TIMEOUT = 10.0  # seconds between SIGTERM and SIGKILL
PAGE = 4096


class NodeError(RuntimeError):
    """A node could not be set up or started (the message carries its stderr tail)."""


@dataclass
class Node:
    """One relay node: its config, its real port, its proxy's port and its process."""

    node_id: str
    config: Path
    port: int
    proxy_port: int = 0
    storage: str = ""  # the storage URL init-cluster wrote (no map_size)
    child: LoggedProcess | None = None
    starts: int = 0
    kills: int = field(default=0)
    scheme: str = "wss"  # "ws" for a plain node (NodeSet plain)

    @property
    def url(self) -> str:
        """The URL in the cluster file: the proxy's (TLS passes through it untouched)."""
        return f"{self.scheme}://127.0.0.1:{self.proxy_port}"

    @property
    def running(self) -> bool:
        """True while the process is alive."""
        return self.child is not None and self.child.running

    @property
    def data_file(self) -> Path:
        """LMDB's ``data.mdb`` of this node."""
        return Path(self.storage.removeprefix("lmdb://")) / "data.mdb"


class NodeSet:
    """N relay nodes under ``root`` (``data/``, ``logs/``), reachable through proxies.

    Args:
        root: a directory this set owns.
        count: number of nodes (ids ``n1 .. nN``).
        network: the proxies' rules; its ``owners`` map is kept up to date here.
        keepalive: if given, every node's ``keepalive_interval`` and ``keepalive_timeout``
            (seconds; docs/operations.md) instead of the defaults (20 and 10).
        plain: nodes listen on plain ``ws://`` (``init-cluster --insecure-loopback``).
    """

    def __init__(self, root: Path, count: int, network: Network,
                 keepalive: float | None = None, plain: bool = False) -> None:
        self.keepalive = keepalive
        self.plain = plain
        self.root = root
        self.data = root / "data"
        self.logs = root / "logs"
        self.count = count
        self.network = network
        self.nodes: dict[str, Node] = {}
        self.trace: Callable[[str], None] = lambda text: None

    async def init(self) -> None:
        """Run ``wa-relay init-cluster`` on a free port range; fills :attr:`nodes`
        (proxy ports still 0). Raises NodeError if it fails."""
        self.logs.mkdir(parents=True, exist_ok=True)
        base = free_base_port(self.count)
        argv = [*tool("wa-relay"), "init-cluster", "--nodes", str(self.count), "--base-port",
                str(base), "--data", str(self.data), "--host", "127.0.0.1",
                *(["--insecure-loopback"] if self.plain else [])]
        run = await trio.run_process(argv, capture_stdout=True, capture_stderr=True,
                                     env=child_env(), check=False)
        if run.returncode != 0:
            raise NodeError(f"init-cluster failed: {run.stderr.decode(errors='replace')}")
        for k in range(1, self.count + 1):
            config = self.data / f"n{k}" / "node.toml"
            fields = tomllib.loads(config.read_text())
            if self.keepalive is not None:
                fields.update(keepalive_interval=self.keepalive, keepalive_timeout=self.keepalive)
                write_text_atomic(config, format_node(fields))
            self.nodes[f"n{k}"] = Node(f"n{k}", config, fields["port"], storage=fields["storage"],
                                       scheme="ws" if self.plain else "wss")

    def point_at_proxies(self, proxy_ports: dict[str, int]) -> None:
        """Rewrite the cluster file so that node ``nid``'s URL is its proxy on
        ``proxy_ports[nid]``."""
        cluster_file = self.data / "cluster.toml"
        infos = []
        for info in load_cluster(cluster_file):
            node = self.nodes[info.id]
            node.proxy_port = proxy_ports[info.id]
            infos.append(NodeInfo(info.id, node.url, info.public_key))
        write_text_atomic(cluster_file, format_cluster(infos))
        sign_cluster_file(cluster_file, load_key(self.data / CLUSTER_KEY_FILE))

    def node_of_url(self, url: str) -> str:
        """The node id whose (proxy) URL is ``url``. Raises KeyError."""
        for nid, node in self.nodes.items():
            if node.url == url.rstrip("/"):
                return nid
        raise KeyError(url)

    async def start(self, nid: str) -> None:
        """Start ``nid`` and wait for its ready line. Raises NodeError."""
        node = self.nodes[nid]
        child = LoggedProcess(
            [*tool("wa-relay"), "serve", "--config", str(node.config)],
            stdout_log=self.logs / f"{nid}.stdout", stderr_log=self.logs / f"{nid}.stderr",
            cwd=node.config.parent, name=nid)
        node.child, node.starts = child, node.starts + 1
        self.network.owners[child.pid] = nid
        ready = await trio.to_thread.run_sync(child.next_ready, time.monotonic() + READY_TIMEOUT)
        self.trace(f"node {nid} started" if ready else f"node {nid} did NOT start")
        if ready is None:
            await self._reap(node, signal.SIGKILL)
            raise NodeError(f"node {nid} did not start:\n{file_tail(self.logs / f'{nid}.stderr')}")

    async def start_all(self) -> None:
        """Start every node."""
        for nid in self.nodes:
            await self.start(nid)

    async def _reap(self, node: Node, sig: int) -> None:
        child, node.child = node.child, None
        if child is None:
            return
        self.network.owners.pop(child.pid, None)
        self.trace(f"node {node.node_id} {signal.Signals(sig).name}")
        if sig == signal.SIGKILL:
            await trio.to_thread.run_sync(child.kill, STOP_TIMEOUT)
        else:
            await trio.to_thread.run_sync(child.stop, STOP_TIMEOUT)

    async def kill(self, nid: str) -> None:
        """SIGKILL ``nid`` (kill -9) and reap it."""
        self.nodes[nid].kills += 1
        await self._reap(self.nodes[nid], signal.SIGKILL)

    async def stop(self, nid: str) -> None:
        """SIGTERM ``nid`` (SIGKILL after :data:`STOP_TIMEOUT` s) and reap it."""
        await self._reap(self.nodes[nid], signal.SIGTERM)

    async def ensure_running(self) -> list[str]:
        """Start every node that is not running; returns their ids."""
        started = [nid for nid, n in self.nodes.items() if not n.running]
        for nid in started:
            if self.nodes[nid].child is not None:  # it died by itself: reap it first
                await self._reap(self.nodes[nid], signal.SIGKILL)
            await self.start(nid)
        return started

    def set_map_size(self, nid: str, map_size: int | None) -> None:
        """Write ``nid``'s node.toml with LMDB ``map_size`` (bytes, rounded up to a
        page) or, for ``None``, the storage URL init-cluster wrote. Takes effect at
        the next start."""
        node = self.nodes[nid]
        fields = tomllib.loads(node.config.read_text())
        fields["storage"] = node.storage
        if map_size is not None:
            fields["storage"] += f"?map_size={-(-map_size // PAGE) * PAGE}"
        write_text_atomic(node.config, format_node(fields))

    def used_bytes(self, nid: str) -> int:
        """Size of ``nid``'s LMDB data file (0 before the first commit)."""
        try:
            return self.nodes[nid].data_file.stat().st_size
        except FileNotFoundError:
            return 0

    async def close(self) -> None:
        """Stop every node (SIGTERM, SIGKILL after a grace period)."""
        for node in self.nodes.values():
            await self._reap(node, signal.SIGTERM)

    def log_problems(self) -> dict[str, dict[str, int]]:
        """Per node: how many tracebacks and ERROR lines its stderr holds (across restarts)."""
        out = {}
        for nid in self.nodes:
            text = file_tail(self.logs / f"{nid}.stderr", 10**9)
            out[nid] = {"tracebacks": text.count("Traceback"), "errors": text.count(" ERROR ")}
        return out
