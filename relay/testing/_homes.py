"""``wa-relay serve`` processes of a fresh local cluster in which a node may be served
by several processes (one address each, ``urls = [...]`` in the cluster file), for
tests and benchmarks."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from relay.config import load_cluster
from relay.config.cluster_files import format_cluster, init_cluster, write_text_atomic

from ._ports import LOOPBACK, free_base_port, free_ports
from ._process import LoggedProcess, child_env, tool

READY_TIMEOUT = 30.0  # seconds for a process to print its ready line
STOP_TIMEOUT = 10.0


class ProcessFailed(RuntimeError):
    """A relay process exited or printed no ready line in time (its stderr tail inside)."""


class ProcessCluster:
    """A cluster ``n1..nN`` laid out under ``root`` (:func:`init_cluster`), each node
    served by ``processes.get(node_id, 1)`` processes.

    Process ``k`` of a node listens on the node's ``k``-th address (``WA_RELAY_PORT``);
    processes after the first have no admin listener and log to ``node-<k>.log``.

    Args:
        root: an empty directory.
        n: number of nodes.
        processes: node id -> how many processes serve it (default 1 each).
        storage_url: node id -> storage URL (default: the layout's ``lmdb://data``).
            A node served by several processes needs a shared one (``postgresql://``).
        host: the loopback address everything listens on.

    Attributes:
        cluster_file: the ``cluster.toml``.
        urls: node id -> its addresses, in order.
        procs: ``(node_id, k)`` -> the running (or last) process.
    """

    def __init__(self, root: Path, n: int, *, processes: dict[str, int] | None = None,
                 storage_url: Callable[[str], str] | None = None, host: str = LOOPBACK) -> None:
        self.root = root
        self.cluster_file = root / "cluster.toml"
        self.procs: dict[tuple[str, int], LoggedProcess] = {}
        self.configs: dict[str, Path] = {}
        counts = processes or {}
        for config in init_cluster(root, n, free_base_port(n, host=host), host):
            node_id = config.parent.name
            self.configs[node_id] = config
            if storage_url is not None:
                url = json.dumps(storage_url(node_id))  # a valid TOML basic string
                lines = [f"storage = {url}" if line.startswith("storage = ") else line
                         for line in config.read_text().splitlines()]
                config.write_text("\n".join(lines) + "\n")
        nodes = []
        for info in load_cluster(self.cluster_file):
            extra = counts.get(info.id, 1) - 1
            if extra > 0:
                more = tuple(f"ws://{host}:{p}" for p in free_ports(extra, host))
                info = replace(info, urls=(info.url, *more))
            nodes.append(info)
        write_text_atomic(self.cluster_file, format_cluster(nodes))
        self.urls: dict[str, tuple[str, ...]] = {info.id: info.urls for info in nodes}

    def start(self, node_id: str, k: int = 0, timeout: float = READY_TIMEOUT) -> LoggedProcess:
        """Start process ``k`` of ``node_id``; return once it listens.

        Raises:
            ProcessFailed: it exited or printed no ready line in time.
        """
        config = self.configs[node_id]
        env = child_env()
        if k:
            port = int(self.urls[node_id][k].rsplit(":", 1)[1])
            env.update(WA_RELAY_PORT=str(port), WA_RELAY_ADMIN_PORT="0",
                       WA_RELAY_LOG_FILE=f"node-{k}.log")
        name = f"{node_id}-{k}" if k else node_id
        proc = LoggedProcess([*tool("wa-relay"), "serve", "--config", str(config)],
                             stdout_log=self.root / f"{name}.out",
                             stderr_log=self.root / f"{name}.err", env=env, cwd=config.parent,
                             name=name)
        self.procs[(node_id, k)] = proc
        if proc.next_ready(time.monotonic() + timeout) is None:
            proc.stop(STOP_TIMEOUT)
            raise ProcessFailed(f"{name} did not start: {proc.stderr_tail()}")
        return proc

    def start_all(self) -> None:
        """Start every process of every node (in node order).

        Raises:
            ProcessFailed: see :meth:`start`.
        """
        for node_id, urls in self.urls.items():
            for k in range(len(urls)):
                self.start(node_id, k)

    def pids(self) -> list[int]:
        """The ids of the processes started and still running."""
        return [p.pid for p in self.procs.values() if p.running]

    def kill(self, node_id: str, k: int = 0) -> int:
        """SIGKILL process ``k`` of ``node_id`` and reap it; its exit code (negative)."""
        return self.procs[(node_id, k)].kill(STOP_TIMEOUT)

    def dead(self) -> dict[str, str]:
        """``{name: stderr tail}`` of the processes that exited on their own."""
        return {f"{nid}-{k}": p.stderr_tail(1500) for (nid, k), p in self.procs.items()
                if not p.running and p.proc.returncode not in (-9,)}

    def stop_all(self) -> None:
        """SIGTERM every running process (SIGKILL after :data:`STOP_TIMEOUT`), reap all."""
        for proc in self.procs.values():
            proc.terminate()
        for proc in self.procs.values():
            proc.stop(STOP_TIMEOUT)
