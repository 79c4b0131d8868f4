"""Run ``wa-relay cluster`` as a child process for the demo: free ports, ready lines,
clean stop (SIGTERM, then SIGKILL after a deadline)."""

from __future__ import annotations

import os
import queue
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

HOST = "127.0.0.1"


class DemoError(Exception):
    """A step of the demo failed; the message says which and why."""


def tool(name: str) -> list[str]:
    """argv prefix running console script ``name`` of this environment (next to
    ``sys.executable``), or its entry point through ``sys.executable``."""
    script = Path(sys.executable).parent / name
    if script.exists():
        return [str(script)]
    entry = {"wa-relay": "relay.__main__:main", "wa-cli": "cli.commands:main"}[name]
    module, func = entry.split(":")
    return [sys.executable, "-c", f"import sys; from {module} import {func}; sys.exit({func}())"]


def child_env() -> dict[str, str]:
    """Environment for children: unbuffered stdout, no inherited ``WA_HOME``."""
    env = dict(os.environ)
    env.pop("WA_HOME", None)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((HOST, port))
        except OSError:
            return False
    return True


def free_base_port(count: int) -> int:
    """A port ``P`` with ``P .. P+count-1`` free on 127.0.0.1, below the ephemeral range."""
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    rng = random.Random()
    for _ in range(200):
        base = rng.randrange(20000, max(low, 20001 + count) - count)
        if all(_bindable(base + i) for i in range(count)):
            return base
    raise DemoError(f"no {count} consecutive free ports found")


@dataclass
class ClusterProcess:
    """A running ``wa-relay cluster`` child and the node URLs it announced.

    Attributes:
        args: the arguments given to ``wa-relay``.
        urls: ``{node_id: url}`` from the ``ready <node_id> <url>`` lines.
    """

    args: list[str]
    proc: subprocess.Popen
    log_dir: Path
    urls: dict[str, str] = field(default_factory=dict)
    _lines: queue.Queue = field(default_factory=queue.Queue)
    _reader: threading.Thread | None = None

    @classmethod
    def start(cls, nodes: int, base_port: int, data: Path, log_dir: Path) -> ClusterProcess:
        """Start the cluster; stdout is copied to ``log_dir/cluster.stdout``, stderr
        goes to ``log_dir/cluster.stderr``."""
        log_dir.mkdir(parents=True, exist_ok=True)
        args = ["cluster", "--nodes", str(nodes), "--base-port", str(base_port), "--data", str(data)]
        with (log_dir / "cluster.stderr").open("ab") as err:
            proc = subprocess.Popen(
                [*tool("wa-relay"), *args], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err,
                env=child_env(),
            )
        self = cls(args=args, proc=proc, log_dir=log_dir)
        self._reader = threading.Thread(target=self._pump, daemon=True, name="cluster-stdout")
        self._reader.start()
        return self

    def _pump(self) -> None:
        with (self.log_dir / "cluster.stdout").open("ab") as out:
            for raw in self.proc.stdout:
                out.write(raw)
                out.flush()
                self._lines.put(raw.decode("utf-8", "replace").strip())
        self._lines.put(None)

    def wait_ready(self, nodes: int, timeout: float) -> dict[str, str]:
        """Wait until ``nodes`` ready lines were printed; return ``{node_id: url}``.

        Raises:
            DemoError: the process exited or did not get ready within ``timeout`` s.
        """
        deadline = time.monotonic() + timeout
        while len(self.urls) < nodes:
            remaining = deadline - time.monotonic()
            try:
                line = self._lines.get(timeout=remaining) if remaining > 0 else None
            except queue.Empty:
                line = None
            if line is None:
                raise DemoError(
                    f"the cluster announced {len(self.urls)} of {nodes} nodes within {timeout}s; "
                    f"stderr tail:\n{self.stderr_tail()}"
                )
            parts = line.split()
            if len(parts) == 3 and parts[0] == "ready":
                self.urls[parts[1]] = parts[2]
        return dict(self.urls)

    def stderr_tail(self, limit: int = 3000) -> str:
        """The last ``limit`` bytes the cluster wrote to stderr."""
        try:
            data = (self.log_dir / "cluster.stderr").read_bytes()
        except OSError:
            return ""
        return data[-limit:].decode("utf-8", "replace")

    def stop(self, timeout: float = 10.0) -> tuple[int, bool]:
        """SIGTERM, wait up to ``timeout`` s, then SIGKILL.

        Returns:
            ``(exit_code, killed)``: ``killed`` is True if SIGKILL was needed.
        """
        killed = False
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                killed = True
        code = self.proc.wait(timeout=timeout)
        if self._reader is not None:
            self._reader.join(timeout=timeout)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        return code, killed
