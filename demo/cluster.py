"""Run ``wa-relay cluster`` as a child process for the demo: free ports, ready lines,
clean stop (SIGTERM, then SIGKILL after a deadline); the process plumbing is
:mod:`relay.testing`'s."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from relay.testing import LOOPBACK as HOST
from relay.testing import LoggedProcess, child_env, tool
from relay.testing import free_base_port as _free_base_port

__all__ = ["HOST", "ClusterProcess", "DemoError", "child_env", "free_base_port", "tool"]


class DemoError(Exception):
    """A step of the demo failed; the message says which and why."""


def free_base_port(count: int) -> int:
    """A port ``P`` with ``P .. P+count-1`` free on 127.0.0.1, below the ephemeral range.

    Raises:
        DemoError: no such range found.
    """
    try:
        return _free_base_port(count, host=HOST)
    except OSError as exc:
        raise DemoError(f"no {count} consecutive free ports found") from exc


@dataclass
class ClusterProcess:
    """A running ``wa-relay cluster`` child and the node URLs it announced.

    Attributes:
        args: the arguments given to ``wa-relay``.
        urls: ``{node_id: url}`` from the ``ready <node_id> <url>`` lines.
    """

    args: list[str]
    child: LoggedProcess
    log_dir: Path
    urls: dict[str, str] = field(default_factory=dict)

    @classmethod
    def start(cls, nodes: int, base_port: int, data: Path, log_dir: Path) -> ClusterProcess:
        """Start the cluster; stdout is copied to ``log_dir/cluster.stdout``, stderr
        goes to ``log_dir/cluster.stderr``."""
        log_dir.mkdir(parents=True, exist_ok=True)
        args = ["cluster", "--nodes", str(nodes), "--base-port", str(base_port), "--data", str(data)]
        child = LoggedProcess(
            [*tool("wa-relay"), *args], stdout_log=log_dir / "cluster.stdout",
            stderr_log=log_dir / "cluster.stderr", name="cluster",
        )
        return cls(args=args, child=child, log_dir=log_dir)

    def wait_ready(self, nodes: int, timeout: float) -> dict[str, str]:
        """Wait until ``nodes`` ready lines were printed; return ``{node_id: url}``.

        Raises:
            DemoError: the process exited or did not get ready within ``timeout`` s.
        """
        deadline = time.monotonic() + timeout
        while len(self.urls) < nodes:
            ready = self.child.next_ready(deadline)
            if ready is None:
                raise DemoError(
                    f"the cluster announced {len(self.urls)} of {nodes} nodes within {timeout}s; "
                    f"stderr tail:\n{self.stderr_tail()}"
                )
            node_id, url = ready
            self.urls[node_id] = url
        return dict(self.urls)

    def stderr_tail(self, limit: int = 3000) -> str:
        """The last ``limit`` bytes the cluster wrote to stderr."""
        return self.child.stderr_tail(limit)

    def stop(self, timeout: float = 10.0) -> tuple[int, bool]:
        """SIGTERM, wait up to ``timeout`` s, then SIGKILL.

        Returns:
            ``(exit_code, killed)``: ``killed`` is True if SIGKILL was needed.
        """
        return self.child.stop(timeout)
