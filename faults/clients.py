"""``wa-cli`` devices run as real processes (``--home DIR --json``) from Trio.

:meth:`Device.run` starts one command and collects its JSON lines as they are
printed, so that a process the suite interrupts (SIGKILL, SIGINT, a closed
stdout) still counts what it printed before. Only complete lines (ending in a
newline) count: a line cut by a kill was never fully shown.
"""

from __future__ import annotations

import json
import signal
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import trio

from relay.testing import child_env, tool

from .launch import Zygote

CLI_TIMEOUT = 30.0  # seconds before a command counts as hung and is killed
HUNG_STDERR = 6000  # characters of a hung command's stderr written to the trace
TASK_DUMP_WAIT = 1.0  # seconds a hung command gets to write its task tree (SIGUSR1)
SLOW_DUMP_AFTER = 15.0  # seconds after which a running command writes its task tree once


@dataclass(frozen=True)
class Interrupt:
    """How to interrupt a command: send ``sig`` ``after`` seconds (counted from when
    ``when`` is set, if given), or close its stdout once it printed
    ``close_after_lines`` lines (``wa-cli recv | head -n K``)."""

    sig: int | None = None
    after: float = 0.0
    close_after_lines: int | None = None
    when: trio.Event | None = None

    def describe(self) -> str:
        """``SIGKILL after 0.52 s`` / ``stdout closed after 3 lines``."""
        if self.close_after_lines is not None:
            return f"stdout closed after {self.close_after_lines} lines"
        return f"{signal.Signals(self.sig).name} after {self.after:.2f} s"


@dataclass
class CliResult:
    """What one ``wa-cli`` command did.

    Attributes:
        args: the arguments after ``--home H --json``.
        code: exit code (negative signal number if a signal ended it).
        lines: the JSON objects it printed (complete lines only).
        garbage: complete stdout lines that were not JSON objects.
        stderr: its stderr, decoded.
        hung: it did not finish within its ``hang_after`` seconds and was killed.
        dumped: it was still running after :data:`SLOW_DUMP_AFTER` s and was asked
            (SIGUSR1) for its Trio task tree, which its stderr then holds.
        interrupted: it was interrupted as asked (the signal was sent, or stdout closed).
        seconds: how long it ran (set by :meth:`Device.run`).
    """

    args: tuple[str, ...]
    code: int | None = None
    lines: list[dict] = field(default_factory=list)
    garbage: list[str] = field(default_factory=list)
    stderr: str = ""
    hung: bool = False
    dumped: bool = False  # it ran past SLOW_DUMP_AFTER and wrote its Trio task tree
    interrupted: bool = False
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        """Exit code 0."""
        return self.code == 0

    def last(self) -> dict | None:
        """The last JSON object printed, if any."""
        return self.lines[-1] if self.lines else None

    def error(self) -> str:
        """The last line of stderr (the CLI's error message), or ``""``."""
        lines = [line for line in self.stderr.splitlines() if line.strip()]
        return lines[-1][:300] if lines else ""


@dataclass
class Device:
    """One ``wa-cli`` device: its ``--home``, the account it belongs to, and a label
    used in message texts (``a0`` = alice's device 0)."""

    label: str
    account: str
    home: Path
    user_id: str = ""
    device_id: int = 0
    home_url: str = ""
    trace: Callable[[str], None] | None = None  # gets one line per finished command
    env: dict[str, str] = field(default_factory=dict)  # extra environment of its commands
    launcher: Zygote | None = None  # fork commands through it (else exec ``wa-cli``)

    async def run(self, *args: str, hang_after: float = CLI_TIMEOUT,
                  interrupt: Interrupt | None = None,
                  on_line: Callable[[dict], None] | None = None) -> CliResult:
        """Run ``wa-cli --home HOME --json ARGS``; never raises for a failing command.

        Args:
            hang_after: seconds before the process is SIGKILLed and counted as hung.
            interrupt: interrupt it as described (see :class:`Interrupt`).
            on_line: called with every JSON object as soon as it is printed.
        """
        started = trio.current_time()
        result = await run_cli(self.home, args, hang_after=hang_after, interrupt=interrupt,
                               on_line=on_line, env=self.env, launcher=self.launcher)
        result.seconds = trio.current_time() - started
        if self.trace is not None:
            state = "hung" if result.hung else f"exit {result.code}"
            extra = f" [{interrupt.describe()}]" if result.interrupted and interrupt else ""
            self.trace(f"{self.label} {' '.join(args)[:80]}: {state} after "
                       f"{result.seconds:.2f} s, {len(result.lines)} lines{extra} "
                       f"{result.error() if not result.ok else ''}".rstrip())
            if (result.hung or result.dumped) and result.stderr.strip():
                tail = result.stderr.strip()[-HUNG_STDERR:]
                self.trace(f"{self.label} {'hung' if result.hung else 'slow'}; its stderr ended with:\n    "
                           + tail.replace("\n", "\n    "))
        return result


async def run_cli(home: Path, args: tuple[str, ...], *, hang_after: float = CLI_TIMEOUT,
                  interrupt: Interrupt | None = None,
                  on_line: Callable[[dict], None] | None = None,
                  env: dict[str, str] | None = None,
                  launcher: Zygote | None = None) -> CliResult:
    """Run ``wa-cli --home HOME --json ARGS`` and collect what it printed.

    Args:
        home: the device directory.
        args: the command and its arguments.
        hang_after: seconds before it is SIGKILLed and counted as hung.
        interrupt: see :class:`Interrupt`.
        on_line: called with every JSON object as soon as it is printed.
        env: variables added to its environment (e.g. ``WA_KEEPALIVE``).
        launcher: fork it through this fork server (:mod:`faults.zygote`) instead of
            starting the ``wa-cli`` script.

    Returns:
        The :class:`CliResult` (never raises for the command's own failure).
    """
    result = CliResult(tuple(args))
    argv = ["--home", str(home), "--json", *args]
    full_env = {**child_env(), **(env or {})}
    if launcher is not None:
        proc = await launcher.spawn(argv, full_env)
    else:
        proc = await trio.lowlevel.open_process(
            [*tool("wa-cli"), *argv], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, env=full_env)
    stderr = bytearray()

    async def read_stdout() -> None:
        buf = b""
        while chunk := await proc.stdout.receive_some(65536):
            buf += chunk
            *complete, buf = buf.split(b"\n")
            for raw in complete:
                if _take_line(result, raw) and on_line is not None:
                    on_line(result.lines[-1])
                if (interrupt is not None and interrupt.close_after_lines is not None
                        and len(result.lines) >= interrupt.close_after_lines):
                    result.interrupted = True
                    await proc.stdout.aclose()  # the reader went away: like `| head -n K`
                    return

    async def read_stderr() -> None:
        while chunk := await proc.stderr.receive_some(65536):
            stderr.extend(chunk)

    signal_scope = trio.CancelScope()

    async def signal_later(sig: int, after: float, when: trio.Event | None) -> None:
        with signal_scope:
            if when is not None:
                await when.wait()
            await trio.sleep(after)
            if proc.returncode is None:
                proc.send_signal(sig)
                result.interrupted = True

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(read_stdout)
            nursery.start_soon(read_stderr)
            if interrupt is not None and interrupt.sig is not None:
                nursery.start_soon(signal_later, interrupt.sig, interrupt.after, interrupt.when)
            with trio.move_on_after(hang_after) as waited:
                if launcher is not None and hang_after > SLOW_DUMP_AFTER:
                    with trio.move_on_after(SLOW_DUMP_AFTER):
                        await proc.wait()
                    if proc.returncode is None:  # slow: what is it waiting for?
                        result.dumped = True
                        proc.send_signal(signal.SIGUSR1)
                await proc.wait()
            signal_scope.cancel()
            if waited.cancelled_caught:
                result.hung = True
                if launcher is not None:  # its Trio task tree first (faults.zygote)
                    proc.send_signal(signal.SIGUSR1)
                    with trio.move_on_after(TASK_DUMP_WAIT):
                        await proc.wait()
                proc.kill()
                await proc.wait()
            nursery.cancel_scope.deadline = trio.current_time() + 5  # pipes may be held open
    finally:
        if proc.returncode is None:
            proc.kill()
            with trio.CancelScope(shield=True):
                await proc.wait()
        with trio.CancelScope(shield=True):
            for pipe in (proc.stdout, proc.stderr):
                await pipe.aclose()
    result.code = proc.returncode
    result.stderr = stderr.decode("utf-8", "replace")
    return result


def _take_line(result: CliResult, raw: bytes) -> bool:
    """Add one complete stdout line to ``result``; True if it was a JSON object."""
    text = raw.decode("utf-8", "replace").strip()
    if not text:
        return False
    try:
        obj = json.loads(text)
    except json.JSONDecodeError:
        obj = None
    if not isinstance(obj, dict):
        result.garbage.append(text[:200])
        return False
    result.lines.append(obj)
    return True
