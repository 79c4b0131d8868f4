"""One ``wa-cli`` fork server (:mod:`faults.zygote`) for the whole test session.

Starting ``wa-cli`` costs ~0.5 s of CPU in imports before the command does anything,
and the CLI tests start about a thousand of them. The fork server imports the program
once and forks a real, separate process per command (its own pid, signals, exit code,
stdin/stdout/stderr pipes) that runs exactly what the ``wa-cli`` script runs
(:func:`cli.__main__.run`); only the imports are shared. Tests of the interpreter's
own start-up (a Ctrl-C at a random moment from the very first instruction) still start
a fresh ``python -m cli`` (``fresh=True`` in :mod:`cli_procs`).

The server is started and stopped without Trio (it outlives each test's ``trio.run``);
commands are forked through :meth:`faults.launch.Zygote.spawn`. Set
``WA_TEST_FORK_SERVER=0`` to run every command as a fresh process instead.
"""

from __future__ import annotations

import os
import selectors
import shutil
import subprocess
import sys
import time

from faults.launch import READY_TIMEOUT, REPO, ForkedProcess, Zygote, ZygoteError
from relay.testing import child_env

__all__ = ["ForkServer", "enabled"]

STOP_TIMEOUT = 5.0  # seconds for the server to exit once its stdin closed


def enabled() -> bool:
    """Whether this session forks its commands (``WA_TEST_FORK_SERVER`` is not ``0``)."""
    return os.environ.get("WA_TEST_FORK_SERVER", "1") != "0"


class ForkServer:
    """``python -m faults.zygote`` started with :meth:`start`, stopped with :meth:`close`."""

    def __init__(self) -> None:
        self._zygote = Zygote()  # its socket path (a fresh temporary directory) and spawn
        self._proc: subprocess.Popen | None = None

    def start(self) -> None:
        """Start the server and wait until it listens. Raises ZygoteError."""
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "faults.zygote", str(self._zygote.path)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=child_env(), cwd=REPO)
        got = b""
        deadline = time.monotonic() + READY_TIMEOUT
        with selectors.DefaultSelector() as sel:
            sel.register(self._proc.stdout, selectors.EVENT_READ)
            while b"ready\n" not in got and (left := deadline - time.monotonic()) > 0:
                if sel.select(left):
                    chunk = os.read(self._proc.stdout.fileno(), 1024)
                    if not chunk:
                        break
                    got += chunk
        if b"ready\n" not in got:
            self.close()
            raise ZygoteError(f"the wa-cli fork server did not start: {got[-500:]!r}")

    async def spawn(self, argv: list[str], env: dict[str, str],
                    stdin: int | None = None) -> ForkedProcess:
        """Fork ``wa-cli ARGV`` with environment ``env`` and stdin the descriptor
        ``stdin`` (default /dev/null; the caller closes its own). Raises ZygoteError."""
        return await self._zygote.spawn(argv, env, stdin=stdin)

    def close(self) -> None:
        """Stop the server (its stdin closes; SIGKILL if it lingers) and remove its socket.
        Commands still running are not touched: each test reaps its own."""
        if self._proc is not None:
            self._proc.stdin.close()
            try:
                self._proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
            self._proc.stdout.close()
            self._proc = None
        shutil.rmtree(self._zygote.path.parent, ignore_errors=True)
