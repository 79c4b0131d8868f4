"""One ``wa-cli`` fork server (:mod:`faults.zygote`) for the whole test session.

Starting ``wa-cli`` costs ~0.5 s of CPU in imports before the command does anything,
and the CLI and e2e tests start hundreds of them. The fork server imports the program
once and forks a real, separate process per command (its own pid, signals, exit code,
stdin/stdout/stderr pipes) that runs exactly what the ``wa-cli`` script runs
(:func:`cli.__main__.run`); only the imports are shared. Tests of the interpreter's
own start-up (a Ctrl-C at a random moment from the very first instruction) still start
a fresh ``python -m cli`` (``fresh=True`` in :mod:`cli_procs`).

The server is started and stopped without Trio (it outlives each test's ``trio.run``)
by the session fixture ``wa_cli_forks`` (tests/conftest.py), which the CLI and e2e
tests use (their conftest.py) and which registers it with :func:`serve_forks`; the
helpers that start commands ask :func:`current`. Commands are forked through
:meth:`faults.launch.Zygote.spawn` (async, :mod:`tests.cli.cli_procs`) or
:meth:`ForkServer.run` (blocking, :mod:`tests.e2e.devices`). Set
``WA_TEST_FORK_SERVER=0`` to run every command as a fresh process instead.
"""

from __future__ import annotations

import json
import os
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import time

from faults.launch import READY_TIMEOUT, REPO, ForkedProcess, Zygote, ZygoteError
from relay.testing import child_env

__all__ = ["ForkServer", "current", "enabled", "serve_forks"]

STOP_TIMEOUT = 5.0  # seconds for the server to exit once its stdin closed
REAP_TIMEOUT = 10.0  # seconds for a killed command to be reported

# The session's fork server, if any: the one piece of state here, so that the hundreds
# of helper calls that start a command need no fixture argument.
_SERVER: list[ForkServer] = []


def serve_forks(server: ForkServer | None) -> None:
    """Fork later commands through ``server``; ``None``: start each as a fresh process."""
    _SERVER[:] = [] if server is None else [server]


def current() -> ForkServer | None:
    """The fork server commands go through now, if any."""
    return _SERVER[0] if _SERVER else None


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

    def run(self, argv: list[str], env: dict[str, str], timeout: float) -> subprocess.CompletedProcess:
        """Fork ``wa-cli ARGV`` (stdin /dev/null) and wait for its end, blocking, like
        ``subprocess.run(capture_output=True)``: returns its exit code (minus the signal
        number if a signal ended it), stdout and stderr.

        Raises:
            subprocess.TimeoutExpired: it ran longer than ``timeout`` s (it is killed).
            ZygoteError: the server did not fork it or did not report its end.
        """
        deadline = time.monotonic() + timeout
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        null = os.open(os.devnull, os.O_RDONLY)
        control = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            control.settimeout(timeout)
            control.connect(str(self._zygote.path))
            header = json.dumps({"argv": argv, "env": env}).encode() + b"\n"
            socket.send_fds(control, [header], [null, out_w, err_w])
        except BaseException:
            for fd in (out_r, err_r):
                os.close(fd)
            control.close()
            raise
        finally:
            for fd in (null, out_w, err_w):
                os.close(fd)
        with control, os.fdopen(out_r, "rb", 0) as out, os.fdopen(err_r, "rb", 0) as err:
            answers = control.makefile("rb")
            started = answers.readline()
            if not started:
                raise ZygoteError("the fork server did not fork the command")
            pid = json.loads(started)["pid"]
            got = {out: bytearray(), err: bytearray()}
            with selectors.DefaultSelector() as sel:
                for stream in got:
                    sel.register(stream, selectors.EVENT_READ)
                while sel.get_map():
                    left = deadline - time.monotonic()
                    ready = sel.select(left) if left > 0 else []
                    if not ready:
                        os.kill(pid, signal.SIGKILL)
                        control.settimeout(REAP_TIMEOUT)
                        answers.readline()  # reaped
                        raise subprocess.TimeoutExpired(argv, timeout, bytes(got[out]),
                                                        bytes(got[err]))
                    for key, _ in ready:
                        chunk = os.read(key.fd, 65536)
                        if chunk:
                            got[key.fileobj] += chunk
                        else:
                            sel.unregister(key.fileobj)
            control.settimeout(max(deadline - time.monotonic(), 0) + REAP_TIMEOUT)
            ended = answers.readline()
            if not ended:
                raise ZygoteError(f"the fork server did not report the end of {pid}")
            return subprocess.CompletedProcess(argv, int(json.loads(ended)["code"]),
                                               bytes(got[out]), bytes(got[err]))

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
