"""The suite's side of the ``wa-cli`` fork server (:mod:`faults.zygote`).

:class:`Zygote` starts ``python -m faults.zygote`` and forks commands through it;
:class:`ForkedProcess` looks like the :class:`trio.Process` that
:func:`faults.clients.run_cli` otherwise uses (``stdout``, ``stderr``, ``wait``,
``returncode``, ``send_signal``, ``kill``), so the rest of the suite cannot tell.
"""

from __future__ import annotations

import array
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import trio

from relay.testing import child_env

READY_TIMEOUT = 60.0  # seconds for the zygote to import wa-cli and listen
REPO = Path(__file__).resolve().parents[1]  # where ``python -m faults.zygote`` is found


class ZygoteError(RuntimeError):
    """The fork server did not start, or refused a command."""


class ForkedProcess:
    """One command forked by the zygote (see the module docstring)."""

    def __init__(self, pid: int, control: trio.SocketStream, buffered: bytes,
                 stdout: trio.lowlevel.FdStream, stderr: trio.lowlevel.FdStream) -> None:
        self.pid = pid
        self.stdout = stdout
        self.stderr = stderr
        self.returncode: int | None = None
        self._control = control
        self._buf = bytearray(buffered)

    async def wait(self) -> int:
        """Wait for the command to end; its exit code (minus the signal number if a
        signal ended it)."""
        if self.returncode is not None:
            return self.returncode
        while b"\n" not in self._buf:
            chunk = await self._control.receive_some(4096)
            if not chunk:
                raise ZygoteError(f"the fork server dropped command {self.pid}")
            self._buf += chunk
        line = bytes(self._buf[:self._buf.index(b"\n")])
        self.returncode = int(json.loads(line)["code"])
        await self._control.aclose()
        return self.returncode

    def send_signal(self, sig: int) -> None:
        """Send ``sig`` to the command (nothing if it already ended)."""
        if self.returncode is None:
            try:
                os.kill(self.pid, sig)
            except ProcessLookupError:
                pass

    def kill(self) -> None:
        """SIGKILL the command."""
        self.send_signal(signal.SIGKILL)


class Zygote:
    """A running fork server; :meth:`start` it in a nursery, :meth:`spawn` commands."""

    def __init__(self) -> None:
        self._dir = Path(tempfile.mkdtemp(prefix="wa-zygote-"))  # short: a socket path
        self.path = self._dir / "sock"
        self._proc: trio.Process | None = None

    async def start(self) -> None:
        """Start the fork server and wait until it listens. Raises ZygoteError."""
        self._proc = await trio.lowlevel.open_process(
            [sys.executable, "-m", "faults.zygote", str(self.path)], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, env=child_env(),
            cwd=REPO)
        got = b""
        with trio.move_on_after(READY_TIMEOUT):
            while b"ready\n" not in got:
                chunk = await self._proc.stdout.receive_some(1024)
                if not chunk:
                    break
                got += chunk
        if b"ready\n" not in got:
            self._proc.kill()
            raise ZygoteError(f"the wa-cli fork server did not start: {got[-500:]!r}")

    async def close(self) -> None:
        """Stop the fork server (its stdin closes; SIGKILL if it lingers)."""
        if self._proc is None:
            return
        with trio.CancelScope(shield=True):
            await self._proc.stdin.aclose()
            with trio.move_on_after(5):
                await self._proc.wait()
            if self._proc.returncode is None:
                self._proc.kill()
                await self._proc.wait()
            await self._proc.stdout.aclose()
        shutil.rmtree(self._dir, ignore_errors=True)

    async def spawn(self, argv: list[str], env: dict[str, str], *,
                    stdin: int | None = None) -> ForkedProcess:
        """Fork ``wa-cli ARGV`` with environment ``env`` (stdin /dev/null, or the
        descriptor ``stdin``, which the caller keeps and closes; stdout and stderr pipes
        to us). Raises ZygoteError if the server does not answer."""
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        null = os.open(os.devnull, os.O_RDONLY) if stdin is None else os.dup(stdin)
        sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            await sock.connect(str(self.path))
            header = json.dumps({"argv": argv, "env": env}).encode() + b"\n"
            sent = await sock.sendmsg([header], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                                                  array.array("i", [null, out_w, err_w]))])
            while sent < len(header):  # a long argv: the rest of the line (fds went first)
                sent += await sock.send(header[sent:])
        except BaseException:
            sock.close()
            for fd in (out_r, err_r):
                os.close(fd)
            raise
        finally:
            for fd in (null, out_w, err_w):
                os.close(fd)
        control = trio.SocketStream(sock)
        buf = bytearray()
        try:
            while b"\n" not in buf:
                chunk = await control.receive_some(4096)
                if not chunk:
                    raise ZygoteError("the fork server did not fork the command")
                buf += chunk
        except BaseException:
            with trio.CancelScope(shield=True):
                await control.aclose()
            for fd in (out_r, err_r):
                os.close(fd)
            raise
        nl = buf.index(b"\n")
        pid = int(json.loads(bytes(buf[:nl]))["pid"])
        return ForkedProcess(pid, control, bytes(buf[nl + 1:]),
                             trio.lowlevel.FdStream(out_r), trio.lowlevel.FdStream(err_r))
