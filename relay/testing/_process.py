"""Child processes of this environment (``wa-relay``, ``wa-cli``) whose stdout is
logged and scanned for ``ready <node_id> <url>`` lines (the contract of
``wa-relay serve`` and ``wa-relay cluster``), with a bounded stop."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

_ENTRY_POINTS = {"wa-relay": "relay.__main__:main", "wa-cli": "cli.commands:main"}


def tool(name: str) -> list[str]:
    """The argv prefix running console script ``name`` (``"wa-relay"`` or ``"wa-cli"``)
    of this environment: the script next to ``sys.executable`` if it exists, else
    its entry point run by ``sys.executable``. Raises KeyError for another name."""
    script = Path(sys.executable).parent / name
    if script.exists():
        return [str(script)]
    module, func = _ENTRY_POINTS[name].split(":")
    return [sys.executable, "-c", f"import sys; from {module} import {func}; sys.exit({func}())"]


def child_env() -> dict[str, str]:
    """A copy of ``os.environ`` for children: unbuffered output (ready lines arrive
    at once), no inherited ``WA_HOME``."""
    env = dict(os.environ)
    env.pop("WA_HOME", None)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def file_tail(path: Path, limit: int = 4000) -> str:
    """The last ``limit`` bytes of ``path`` as text (``""`` if it cannot be read)."""
    try:
        data = path.read_bytes()
    except OSError:
        return ""
    return data[-limit:].decode("utf-8", "replace")


class LoggedProcess:
    """A child process whose stdout is appended to ``stdout_log`` line by line (by a
    daemon thread, so the pipe never fills) and whose stderr goes to ``stderr_log``.

    Args:
        argv: the command line.
        stdout_log, stderr_log: files appended to (they outlive restarts).
        env: the child's environment (default :func:`child_env`).
        cwd: its working directory (default: ours).
        name: a name for the reader thread.

    stdin is ``/dev/null``. Call :meth:`stop` (or :meth:`kill`, :meth:`reap`) to
    release the pipe and the thread.

    Raises:
        OSError: the program could not be started or a log not opened.
    """

    def __init__(
        self, argv: list[str], *, stdout_log: Path, stderr_log: Path,
        env: dict[str, str] | None = None, cwd: Path | None = None, name: str = "child",
    ) -> None:
        self.stdout_log = stdout_log
        self.stderr_log = stderr_log
        with stderr_log.open("ab") as err:
            self.proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err,
                env=child_env() if env is None else env,
                cwd=None if cwd is None else str(cwd),
            )
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._pump, daemon=True, name=f"stdout-{name}")
        self._reader.start()

    def _pump(self) -> None:
        with self.stdout_log.open("ab") as out:
            for raw in self.proc.stdout:
                out.write(raw)
                out.flush()
                self._lines.put(raw.decode("utf-8", "replace").rstrip("\n"))
        self._lines.put(None)

    @property
    def pid(self) -> int:
        """The child's process id."""
        return self.proc.pid

    @property
    def running(self) -> bool:
        """True while the child has not exited."""
        return self.proc.poll() is None

    def next_ready(self, deadline: float) -> tuple[str, str] | None:
        """The next ``ready <node_id> <url>`` line the child prints, as
        ``(node_id, url)``; other lines are skipped.

        Args:
            deadline: a :func:`time.monotonic` time to give up at.

        Returns:
            ``None`` if the child closed its stdout (exited) or the deadline passed.
        """
        while True:
            remaining = deadline - time.monotonic()
            try:
                line = self._lines.get(timeout=remaining) if remaining > 0 else None
            except queue.Empty:
                line = None
            if line is None:
                return None
            parts = line.split()
            if len(parts) == 3 and parts[0] == "ready":
                return parts[1], parts[2]

    def next_line(self, prefix: str, deadline: float) -> str | None:
        """The next stdout line starting with ``prefix`` (other lines are skipped), or
        ``None`` if the child closed its stdout or ``deadline`` (:func:`time.monotonic`)
        passed."""
        while True:
            remaining = deadline - time.monotonic()
            try:
                line = self._lines.get(timeout=remaining) if remaining > 0 else None
            except queue.Empty:
                line = None
            if line is None or line.startswith(prefix):
                return line

    def stderr_tail(self, limit: int = 4000) -> str:
        """The last ``limit`` bytes the child (and earlier runs) wrote to stderr."""
        return file_tail(self.stderr_log, limit)

    def terminate(self) -> None:
        """Send SIGTERM if the child is still running."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    def wait_or_kill(self, timeout: float) -> bool:
        """Wait up to ``timeout`` s for the child to exit, then SIGKILL it.
        Returns True if it had to be killed."""
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return True
        return False

    def reap(self, timeout: float) -> int:
        """Wait for the exit (SIGKILL after ``timeout`` s), end the reader thread and
        close the pipe. Returns the exit code (negative signal number if killed)."""
        self.wait_or_kill(timeout)
        code = self.proc.wait(timeout=timeout)
        self._reader.join(timeout=timeout)
        self.proc.stdout.close()
        return code

    def kill(self, timeout: float) -> int:
        """SIGKILL the child (no chance to flush anything) and :meth:`reap` it."""
        self.proc.send_signal(signal.SIGKILL)
        return self.reap(timeout)

    def stop(self, timeout: float) -> tuple[int, bool]:
        """SIGTERM, wait up to ``timeout`` s, SIGKILL if still running, :meth:`reap`.

        Returns:
            ``(exit_code, killed)``: ``killed`` is True if SIGKILL was needed.
        """
        killed = False
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            killed = self.wait_or_kill(timeout)
        return self.reap(timeout), killed
