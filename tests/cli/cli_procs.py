"""``wa-cli`` as real processes (``python -m cli``) for the tests: run one to the end
(:func:`wa`), or keep one running and read its lines (:class:`Running`).

Cleanup never runs inside an expired deadline: :meth:`Running.aclose` is shielded and
bounded by its own deadline, and always reaps the child."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import trio

__all__ = ["Running", "lines", "signal_before_our_code", "wa"]

REAP_DEADLINE = 10.0  # seconds for a killed child to be reaped
OUR_CODE = str(Path(__file__).resolve().parents[2] / "cli")


def signal_before_our_code(code: int, err: str) -> bool:
    """Whether a SIGINT hit the interpreter's own start-up, before any line of wa-cli ran
    (site, runpy; docs/cli.md "Exit codes"): Python then reports it itself, with exit 1
    and "Fatal Python error: init_import_site", or dies of the signal after printing its
    ``KeyboardInterrupt`` traceback. Such a traceback has no frame of ours."""
    if code == 1 and err.startswith("Fatal Python error: init_import_site"):
        return True
    return (code == -signal.SIGINT and err.startswith("Traceback")
            and err.rstrip().endswith("KeyboardInterrupt") and OUR_CODE not in err)


async def wa(home, *args, check: bool = True, stdin: bytes | None = None,
             env: dict | None = None) -> subprocess.CompletedProcess:
    """Run ``wa-cli --home HOME ARGS`` to the end; returns the completed process."""
    proc = await trio.run_process(
        [sys.executable, "-m", "cli", "--home", str(home), *args],
        capture_stdout=True, capture_stderr=True, check=False,
        stdin=stdin if stdin is not None else subprocess.DEVNULL, env=env,
    )
    if check:
        assert proc.returncode == 0, proc.stderr.decode()
    return proc


def lines(proc: subprocess.CompletedProcess) -> list[dict]:
    """The JSON lines of a finished process's stdout."""
    return [json.loads(line) for line in proc.stdout.decode().split("\n") if line]


class Running:
    """A ``wa-cli`` subprocess whose stdout and stderr are read line by line."""

    def __init__(self, proc: trio.Process) -> None:
        self.proc = proc
        self._bufs = {"out": b"", "err": b""}
        self.err = ""  # every stderr line read so far

    @classmethod
    async def start(cls, home, *args, env: dict | None = None,
                    stdin: int = subprocess.DEVNULL) -> Running:
        """Start ``wa-cli --home HOME ARGS`` (``env``: its whole environment;
        ``stdin=subprocess.PIPE`` to write to it through ``proc.stdin``)."""
        proc = await trio.lowlevel.open_process(
            [sys.executable, "-m", "cli", "--home", str(home), *args], env=env,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=stdin)
        return cls(proc)

    async def _line(self, which: str) -> str:
        stream = self.proc.stdout if which == "out" else self.proc.stderr
        while b"\n" not in self._bufs[which]:
            chunk = await stream.receive_some()
            assert chunk, f"the process closed its std{which}: {self.err}"
            self._bufs[which] += chunk
        line, self._bufs[which] = self._bufs[which].split(b"\n", 1)
        return line.decode()

    async def line(self) -> str:
        """The next line on stdout."""
        return await self._line("out")

    async def json(self) -> dict:
        """The next line on stdout, parsed."""
        return json.loads(await self.line())

    async def err_line(self) -> str:
        """The next line on stderr (also kept in :attr:`err`)."""
        line = await self._line("err")
        self.err += line + "\n"
        return line

    async def stop(self, sig: int = signal.SIGINT) -> tuple[int, str]:
        """Send ``sig``; returns the exit code and everything on stderr."""
        self.proc.send_signal(sig)
        return await self.finish()

    async def finish(self) -> tuple[int, str]:
        """Wait for the exit; returns the exit code and everything on stderr."""
        err = self._bufs["err"]
        while chunk := await self.proc.stderr.receive_some():
            err += chunk
        code = await self.proc.wait()
        await self.proc.stdout.aclose()
        await self.proc.stderr.aclose()
        return code, self.err + err.decode()

    async def aclose(self) -> None:
        """Kill the process if it still runs and reap it, even inside a cancelled or
        expired scope."""
        with trio.CancelScope(shield=True), trio.move_on_after(REAP_DEADLINE):
            if self.proc.returncode is None:
                self.proc.kill()
            await self.proc.wait()
