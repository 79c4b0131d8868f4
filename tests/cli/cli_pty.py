"""``wa-cli`` as a real process on a pseudo-terminal (``pty``), for what only happens on
a terminal: progress bars on stderr, passphrase prompts.

:class:`OnTty` starts ``python -m cli`` with stderr (and, with ``stdin_tty``, stdin as
its controlling terminal) on a pty of 200 columns; stdout stays a pipe. Reading the
pty ends when the child has exited and closed it."""

from __future__ import annotations

import fcntl
import os
import pty
import struct
import subprocess
import sys
import termios

import trio

__all__ = ["OnTty"]

REAP_DEADLINE = 10.0


def _take_terminal() -> None:  # in the child, after setsid: fd 0 becomes the controlling tty
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


class OnTty:
    """A ``wa-cli`` process whose stderr is a pty (see the module docstring).

    Attributes:
        tty: everything read from the pty so far (stderr, and echoed input).
        out: everything read from stdout (after :meth:`finish`).
    """

    def __init__(self, proc: trio.Process, master: int) -> None:
        self.proc = proc
        self._pty = trio.lowlevel.FdStream(master)
        self.tty = ""
        self.out = ""

    @classmethod
    async def start(cls, home, *args, env: dict | None = None, stdin_tty: bool = False) -> OnTty:
        master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 200, 0, 0))
        extra = {"start_new_session": True, "preexec_fn": _take_terminal} if stdin_tty else {}
        try:
            proc = await trio.lowlevel.open_process(
                [sys.executable, "-m", "cli", "--home", str(home), *args],
                stdin=slave if stdin_tty else subprocess.DEVNULL, stdout=subprocess.PIPE,
                stderr=slave, env=env, **extra)
        finally:
            os.close(slave)
        return cls(proc, master)

    async def _read(self) -> bool:
        try:
            chunk = await self._pty.receive_some()
        except trio.BrokenResourceError:  # EIO: the child closed its side
            return False
        if not chunk:
            return False
        self.tty += chunk.decode(errors="replace")
        return True

    async def expect(self, text: str) -> None:
        """Read the pty until ``text`` has appeared (after what was expected before)."""
        while text not in self.tty:
            assert await self._read(), f"the process ended before {text!r}: {self.tty!r}"
        self.tty = self.tty[self.tty.index(text) + len(text):]

    async def send(self, data: str) -> None:
        """Type ``data`` on the terminal."""
        await self._pty.send_all(data.encode())

    async def finish(self) -> int:
        """Read everything until the child exits; returns its exit code."""
        async with trio.open_nursery() as nursery:

            async def read_out() -> None:
                chunks = []
                while chunk := await self.proc.stdout.receive_some():
                    chunks.append(chunk)
                self.out = b"".join(chunks).decode()

            nursery.start_soon(read_out)
            while await self._read():
                pass
        code = await self.proc.wait()
        await self.aclose()
        return code

    async def aclose(self) -> None:
        """Kill the child if it still runs, reap it and close the pty, even when cancelled."""
        with trio.CancelScope(shield=True), trio.move_on_after(REAP_DEADLINE):
            if self.proc.returncode is None:
                self.proc.kill()
            await self.proc.wait()
            await self._pty.aclose()
            await self.proc.stdout.aclose()
