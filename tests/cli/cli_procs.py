"""``wa-cli`` as real processes for the tests: run one to the end (:func:`wa`), or keep
one running and read its lines (:class:`Running`).

Each command is its own process, forked by the session's fork server
(:mod:`tests.forkserver`) when the session has one, else a fresh
``python -m cli``; ``fresh=True`` always starts a fresh interpreter (for the tests of
start-up itself: a signal in the interpreter's first instructions).

Cleanup never runs inside an expired deadline: :meth:`Running.aclose` is shielded and
bounded by its own deadline, and always reaps the child."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import trio

from tests.forkserver import current

__all__ = ["Running", "lines", "signal_before_our_code", "wa"]

REAP_DEADLINE = 10.0  # seconds for a killed child to be reaped
OUR_CODE = str(Path(__file__).resolve().parents[2] / "cli")


def _argv(home, args) -> list[str]:
    return ["--home", str(home), *(str(a) for a in args)]


async def _forked(home, args, *, env: dict | None, stdin: int | None):
    """A forked ``wa-cli`` command, or None without a fork server."""
    server = current()
    if server is None:
        return None
    return await server.spawn(_argv(home, args), dict(os.environ if env is None else env),
                              stdin=stdin)


async def _drain(stream, into: bytearray) -> None:
    while chunk := await stream.receive_some():
        into += chunk


async def _feed(stream: trio.lowlevel.FdStream, data: bytes) -> None:
    try:
        await stream.send_all(data)
    except trio.BrokenResourceError:
        pass  # the command exited without reading it all, as with trio.run_process
    finally:
        await stream.aclose()


async def _run_forked(home, args, *, stdin: bytes | None,
                      env: dict | None) -> subprocess.CompletedProcess | None:
    """Run a forked command to the end (None without a fork server); killed and reaped
    if the caller is cancelled."""
    read_end, write_end = os.pipe() if stdin is not None else (None, None)
    feed = None if write_end is None else trio.lowlevel.FdStream(write_end)  # owns it now
    try:
        proc = await _forked(home, args, env=env, stdin=read_end)
    except BaseException:
        if feed is not None:
            await feed.aclose()
        raise
    finally:
        if read_end is not None:
            os.close(read_end)
    if proc is None:
        if feed is not None:
            await feed.aclose()
        return None
    out, err = bytearray(), bytearray()
    try:
        async with trio.open_nursery() as nursery:
            if feed is not None:
                nursery.start_soon(_feed, feed, stdin)
            nursery.start_soon(_drain, proc.stdout, out)
            nursery.start_soon(_drain, proc.stderr, err)
        code = await proc.wait()
    finally:
        with trio.CancelScope(shield=True), trio.move_on_after(REAP_DEADLINE):
            if feed is not None:
                await feed.aclose()  # again is harmless
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
            await proc.stdout.aclose()
            await proc.stderr.aclose()
    return subprocess.CompletedProcess([sys.executable, "-m", "cli", *_argv(home, args)],
                                       code, bytes(out), bytes(err))


def signal_before_our_code(code: int, err: str) -> bool:
    """Whether a SIGINT hit the interpreter's own start-up, before any line of wa-cli ran
    (its own set-up, site, runpy; docs/cli.md "Exit codes"): Python then reports it
    itself, with exit 1 and "Fatal Python error: init_..." (``init_import_site``,
    ``init_sys_streams``: whichever step of its initialisation it was in), or dies of
    the signal after printing its ``KeyboardInterrupt`` traceback. Such a traceback has
    no frame of ours."""
    if code == 1 and err.startswith("Fatal Python error: init_"):
        return True
    return (code == -signal.SIGINT and err.startswith("Traceback")
            and err.rstrip().endswith("KeyboardInterrupt") and OUR_CODE not in err)


async def wa(home, *args, check: bool = True, stdin: bytes | None = None,
             env: dict | None = None, fresh: bool = False) -> subprocess.CompletedProcess:
    """Run ``wa-cli --home HOME ARGS`` to the end (``stdin``: bytes written to it, else
    /dev/null; ``env``: its whole environment, default ours; ``fresh``: a new
    interpreter even with a fork server); returns the completed process with stdout
    and stderr. Asserts exit code 0 if ``check``."""
    proc = None if fresh else await _run_forked(home, args, stdin=stdin, env=env)
    if proc is None:
        proc = await trio.run_process(
            [sys.executable, "-m", "cli", *_argv(home, args)],
            capture_stdout=True, capture_stderr=True, check=False,
            stdin=stdin if stdin is not None else subprocess.DEVNULL, env=env,
        )
    if check:
        assert proc.returncode == 0, proc.stderr.decode()
    return proc


async def init_account(home, name: str, url: str) -> str:
    """``wa-cli init`` a new account named ``name`` at ``url`` (trust on first use) in
    ``home``; returns its user id."""
    made = await wa(home, "--json", "init", "--trust-on-first-use", "--name", name,
                    "--relay", url)
    return json.loads(made.stdout)["user_id"]


def lines(proc: subprocess.CompletedProcess) -> list[dict]:
    """The JSON lines of a finished process's stdout."""
    return [json.loads(line) for line in proc.stdout.decode().split("\n") if line]


class Running:
    """A ``wa-cli`` subprocess whose stdout and stderr are read line by line."""

    def __init__(self, proc) -> None:
        self.proc = proc  # a trio.Process, or a faults.launch.ForkedProcess (same methods)
        self._bufs = {"out": b"", "err": b""}
        self.err = ""  # every stderr line read so far

    @classmethod
    async def start(cls, home, *args, env: dict | None = None,
                    stdin: int = subprocess.DEVNULL, fresh: bool = False) -> Running:
        """Start ``wa-cli --home HOME ARGS`` (``env``: its whole environment;
        ``stdin=subprocess.PIPE`` to write to it through ``proc.stdin``; ``fresh``: a
        new interpreter even with a fork server, for tests of start-up itself)."""
        if not fresh and current() is not None:
            if stdin == subprocess.PIPE:
                read_end, write_end = os.pipe()
                try:
                    proc = await _forked(home, args, env=env, stdin=read_end)
                except BaseException:
                    os.close(write_end)
                    raise
                finally:
                    os.close(read_end)
                proc.stdin = trio.lowlevel.FdStream(write_end)
            else:
                assert stdin == subprocess.DEVNULL, stdin
                proc = await _forked(home, args, env=env, stdin=None)
            return cls(proc)
        proc = await trio.lowlevel.open_process(
            [sys.executable, "-m", "cli", *_argv(home, args)], env=env,
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
            if getattr(self.proc, "stdin", None) is not None:
                await self.proc.stdin.aclose()


async def bob_and_a_stranger_elsewhere(tmp_path, cluster) -> tuple[dict[str, dict], str, str]:
    """``wa-cli init`` bob, then others (homes under ``tmp_path / NAME``) until one has
    a home node other than bob's (user ids are random: any number of them may hash
    to bob's node, so this draws until one does not, at most 40 tries); returns
    ``(users by name, the name of that one, its home node id)``."""
    users: dict[str, dict] = {}
    for i in range(41):
        name = "bob" if i == 0 else f"user{i}"
        (users[name],) = lines(await wa(tmp_path / name, "--json", "init",
                                        "--trust-on-first-use", "--name", name,
                                        "--relay", cluster.urls["n1"]))
        home = cluster.home_of(users[name]["user_id"])
        if i == 0:
            bob_home = home
        elif home != bob_home:
            return users, name, home
    raise AssertionError("40 accounts all hashed to bob's home node")
