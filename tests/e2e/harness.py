"""Drive real ``wa-relay`` nodes and ``wa-cli`` devices as subprocesses on 127.0.0.1.

Nothing here is mocked: a :class:`Cluster` runs ``wa-relay init-cluster`` into a
temporary directory and starts each node with ``wa-relay serve --config`` as its
own process, so a test can SIGTERM, SIGKILL or restart exactly one node on its
own data. Devices (``wa-cli``) are in :mod:`.devices`.

Layout under the root directory a test gives (usually ``tmp_path``)::

    data/            everything the relays own: cluster.toml, n1/ (node.toml, node.key, data/, node.log)
    logs/nK.stdout   what node nK printed on stdout (appended across restarts)
    logs/nK.stderr   what node nK printed on stderr (appended across restarts)
    devices/NAME-i/  one ``--home`` per wa-cli device

Every wait has a deadline; nothing sleeps for a fixed time to wait for an event.
"""

from __future__ import annotations

import shutil
import subprocess
import time
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from relay.testing import LoggedProcess, file_tail

from .procs import HOST, HarnessError, free_base_port, subprocess_env, tool

READY_TIMEOUT = 30.0  # seconds for a node to print its ready line
STOP_TIMEOUT = 10.0  # seconds between SIGTERM and SIGKILL
CLI_TIMEOUT = 60.0  # seconds for wa-relay init-cluster


# ----------------------------------------------------------------------- nodes


@dataclass
class Node:
    """One relay node of a :class:`Cluster` and its current process (if running)."""

    node_id: str
    url: str
    public_key: str
    config: Path
    stdout_log: Path
    stderr_log: Path
    child: LoggedProcess | None = None
    ready_url: str | None = None

    @property
    def proc(self) -> subprocess.Popen | None:
        """The current process, if the node was started and not yet reaped."""
        return None if self.child is None else self.child.proc

    @property
    def pid(self) -> int:
        """The running process's pid. Raises HarnessError if not running."""
        if self.child is None or not self.child.running:
            raise HarnessError(f"node {self.node_id} is not running")
        return self.child.pid

    @property
    def running(self) -> bool:
        """True if the node's process is alive."""
        return self.child is not None and self.child.running

    @property
    def port(self) -> int:
        """The TCP port from the node's URL."""
        return int(self.url.rsplit(":", 1)[1].split("/", 1)[0])


class Cluster:
    """N real relay nodes, each its own ``wa-relay serve`` process on 127.0.0.1.

    Args:
        root: an empty directory this cluster owns (``data/``, ``logs/`` below it).
        nodes: number of nodes, ids ``n1 .. nN``.

    Use as a context manager (or call :meth:`close`): every process it started
    is stopped on exit, with SIGKILL after :data:`STOP_TIMEOUT` seconds.
    """

    def __init__(self, root: Path, nodes: int = 3) -> None:
        self.root = Path(root)
        self.size = nodes
        self.data = self.root / "data"
        self.logs = self.root / "logs"
        self.nodes: dict[str, Node] = {}
        self.base_port: int | None = None

    # -- set-up

    def init(self) -> None:
        """Run ``wa-relay init-cluster`` into ``root/data`` on a free port range."""
        if self.data.exists():
            shutil.rmtree(self.data)
        self.logs.mkdir(parents=True, exist_ok=True)
        self.base_port = free_base_port(2 * self.size)  # node ports, then admin ports
        argv = [
            *tool("wa-relay"), "init-cluster", "--nodes", str(self.size),
            "--base-port", str(self.base_port), "--data", str(self.data), "--host", HOST,
        ]
        run = subprocess.run(
            argv, capture_output=True, timeout=CLI_TIMEOUT, env=subprocess_env(), check=False
        )
        if run.returncode != 0:
            raise HarnessError(
                f"wa-relay init-cluster failed ({run.returncode}):\n"
                f"{run.stdout.decode(errors='replace')}\n{run.stderr.decode(errors='replace')}"
            )
        cluster = tomllib.loads((self.data / "cluster.toml").read_text())
        entries = cluster.get("node", [])
        if len(entries) != self.size:
            raise HarnessError(f"cluster.toml lists {len(entries)} nodes, expected {self.size}")
        self.nodes = {}
        for entry in entries:
            nid = entry["id"]
            config = self.data / nid / "node.toml"
            if not config.exists():
                raise HarnessError(f"init-cluster did not write {config}")
            self.nodes[nid] = Node(
                node_id=nid, url=entry["url"], public_key=entry["public_key"], config=config,
                stdout_log=self.logs / f"{nid}.stdout", stderr_log=self.logs / f"{nid}.stderr",
            )

    def start_all(self, attempts: int = 3) -> None:
        """:meth:`init` and start every node; on a start failure (a port was taken
        meanwhile) stop everything and retry on a new port range."""
        for attempt in range(attempts):
            self.init()
            try:
                for nid in self.nodes:
                    self.start(nid)
                return
            except HarnessError:
                self.close()
                if attempt == attempts - 1:
                    raise

    # -- one node

    def node(self, node_id: str) -> Node:
        """The :class:`Node` with id ``node_id``."""
        return self.nodes[node_id]

    def url(self, node_id: str) -> str:
        """The WebSocket URL of ``node_id`` as written in cluster.toml."""
        return self.nodes[node_id].url

    def node_for_url(self, url: str) -> str:
        """The node id whose URL is ``url`` (trailing slashes ignored)."""
        want = url.rstrip("/")
        for nid, node in self.nodes.items():
            if node.url.rstrip("/") == want:
                return nid
        raise HarnessError(f"{url!r} is not a node of this cluster ({self.urls()})")

    def urls(self) -> dict[str, str]:
        """``{node_id: url}``."""
        return {nid: n.url for nid, n in self.nodes.items()}

    def start(self, node_id: str, timeout: float = READY_TIMEOUT) -> Node:
        """Start ``wa-relay serve --config`` for ``node_id`` and wait for its ready line.

        Raises:
            HarnessError: the process exited or printed no ``ready`` line in time
                (the message carries the tail of its stderr).
        """
        node = self.nodes[node_id]
        if node.running:
            raise HarnessError(f"node {node_id} is already running")
        child = LoggedProcess(
            [*tool("wa-relay"), "serve", "--config", str(node.config)],
            stdout_log=node.stdout_log, stderr_log=node.stderr_log, env=subprocess_env(),
            cwd=node.config.parent, name=node_id,
        )
        node.child, node.ready_url = child, None
        ready = child.next_ready(time.monotonic() + timeout)
        if ready is None:
            self._abort(node)
            raise HarnessError(
                f"node {node_id} printed no ready line within {timeout}s "
                f"(exit code {child.proc.returncode}); stderr tail:\n{file_tail(node.stderr_log)}"
            )
        ready_id, node.ready_url = ready
        if ready_id != node_id:
            self._abort(node)
            raise HarnessError(f"node {node_id} announced itself as {ready_id!r}")
        if node.ready_url.rstrip("/") != node.url.rstrip("/"):
            self._abort(node)
            raise HarnessError(f"node {node_id} is ready at {node.ready_url}, cluster.toml says {node.url}")
        return node

    def _abort(self, node: Node) -> None:
        """SIGKILL the node's process if it still runs, and reap it."""
        if node.child is not None:
            node.child.kill(STOP_TIMEOUT)
        node.child = None

    def _reap(self, node: Node) -> int | None:
        code = None if node.child is None else node.child.reap(STOP_TIMEOUT)
        node.child = None
        return code

    def stop(self, node_id: str, timeout: float = STOP_TIMEOUT) -> int | None:
        """SIGTERM ``node_id``; SIGKILL it if it has not exited after ``timeout`` s.

        Returns:
            The exit code (negative signal number if it was killed), or ``None``
            if it was not running.
        """
        node = self.nodes[node_id]
        if node.child is None:
            return None
        code, _ = node.child.stop(timeout)
        node.child = None
        return code

    def kill(self, node_id: str) -> None:
        """SIGKILL ``node_id`` (kill -9: no chance to flush anything) and reap it."""
        node = self.nodes[node_id]
        if node.child is None:
            raise HarnessError(f"node {node_id} is not running")
        self._abort(node)

    def restart(self, node_id: str) -> Node:
        """Start ``node_id`` again on the same config and data."""
        return self.start(node_id)

    def close(self) -> None:
        """Stop every node this cluster started (SIGTERM, then SIGKILL)."""
        running = [n for n in self.nodes.values() if n.child is not None]
        for node in running:
            node.child.terminate()
        deadline = time.monotonic() + STOP_TIMEOUT
        for node in running:
            node.child.wait_or_kill(max(deadline - time.monotonic(), 0.1))
            self._reap(node)

    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- checks

    def assert_running(self, *node_ids: str) -> None:
        """Fail if any of ``node_ids`` (default: all) has exited."""
        for nid in node_ids or tuple(self.nodes):
            node = self.nodes[nid]
            if not node.running:
                code = node.proc.returncode if node.proc is not None else None
                raise HarnessError(
                    f"node {nid} is not running (exit code {code}); stderr tail:\n"
                    f"{file_tail(node.stderr_log)}"
                )

    def assert_clean_logs(self) -> None:
        """Fail if any node wrote a Python traceback to stderr or its node.log
        (a crash, or an error that escaped a handler)."""
        for nid, node in self.nodes.items():
            for path in (node.stderr_log, node.config.parent / "node.log"):
                text = file_tail(path, limit=10**8)
                assert "Traceback" not in text, f"node {nid} logged a traceback in {path}:\n{text[-3000:]}"

    def home_of(self, user_id: str) -> str:
        """The node id of ``user_id``'s home by the ring (``relay.config.ring``) over cluster.toml."""
        from relay.config.ring import NodeInfo, Ring  # the node's own rendezvous hashing

        # Only node ids take part in the hash; keys are irrelevant to the mapping.
        ring = Ring(NodeInfo(n.node_id, n.url, b"") for n in self.nodes.values())
        return ring.home(user_id).id

    def relay_files(self) -> Iterator[Path]:
        """Every file the relays wrote: the whole data dir plus captured stdout/stderr."""
        for top in (self.data, self.logs):
            for path in sorted(top.rglob("*")):
                if path.is_file():
                    yield path

    def stderr_text(self, node_id: str) -> str:
        """Everything node ``node_id`` wrote to stderr so far, across restarts."""
        return file_tail(self.nodes[node_id].stderr_log, limit=10**8)
