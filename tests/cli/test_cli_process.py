"""``wa-cli`` as a subprocess (``python -m cli``) against in-process relay nodes: a retried
``init``, Ctrl-C and node restarts under ``recv --follow``, two processes on one home."""

from __future__ import annotations

import json
import signal
import subprocess
import sys

import trio
from cli_cluster import run_cluster

DEADLINE = 60


async def wa(home, *args, check=True) -> subprocess.CompletedProcess:
    """Run ``wa-cli --home HOME ARGS``; returns the completed process."""
    proc = await trio.run_process(
        [sys.executable, "-m", "cli", "--home", str(home), *args],
        capture_stdout=True, capture_stderr=True, check=False, stdin=subprocess.DEVNULL,
    )
    if check:
        assert proc.returncode == 0, proc.stderr.decode()
    return proc


def lines(proc: subprocess.CompletedProcess) -> list[dict]:
    return [json.loads(line) for line in proc.stdout.decode().split("\n") if line]


async def test_init_retried_on_a_reachable_relay_succeeds_there(tmp_path):
    with trio.fail_after(DEADLINE):
        async with run_cluster(1) as cluster:
            relay = cluster.urls["n1"]
            first = await wa(tmp_path / "a", "init", "--name", "old", "--relay",
                             "ws://127.0.0.1:9", check=False)
            assert first.returncode == 1 and "cannot connect" in first.stderr.decode()
            (made,) = lines(await wa(tmp_path / "a", "--json", "init", "--name", "alice",
                                     "--relay", relay))
            assert made["home"] == relay
            (ident,) = lines(await wa(tmp_path / "a", "--json", "id"))
            assert (ident["name"], ident["home"], ident["user_id"]) == (
                "alice", relay, made["user_id"])


class Running:
    """A ``wa-cli`` subprocess whose stdout is read line by line."""

    def __init__(self, proc: trio.Process) -> None:
        self.proc = proc
        self._buf = b""

    @classmethod
    async def start(cls, home, *args) -> Running:
        proc = await trio.lowlevel.open_process(
            [sys.executable, "-m", "cli", "--home", str(home), *args],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
        return cls(proc)

    async def line(self) -> str:
        while b"\n" not in self._buf:
            chunk = await self.proc.stdout.receive_some()
            assert chunk, "the process closed its stdout"
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return line.decode()

    async def stop(self, sig: int = signal.SIGINT) -> tuple[int, str]:
        """Send ``sig``; returns the exit code and everything on stderr."""
        self.proc.send_signal(sig)
        err = b""
        while chunk := await self.proc.stderr.receive_some():
            err += chunk
        code = await self.proc.wait()
        await self.proc.stdout.aclose()
        await self.proc.stderr.aclose()
        return code, err.decode()

    async def aclose(self) -> None:
        if self.proc.returncode is None:
            self.proc.kill()
        await self.proc.wait()


async def test_ctrl_c_stops_recv_follow_quietly_with_exit_0(tmp_path):
    with trio.fail_after(DEADLINE):
        async with run_cluster(1) as cluster:
            relay = cluster.urls["n1"]
            (bob,) = lines(await wa(tmp_path / "b", "--json", "init", "--name", "bob",
                                    "--relay", relay))
            await wa(tmp_path / "a", "init", "--name", "alice", "--relay", relay)
            follow = await Running.start(tmp_path / "b", "recv", "--follow")
            try:
                await wa(tmp_path / "a", "send", bob["user_id"], "are you there")
                assert (await follow.line()).endswith(": are you there")
                code, err = await follow.stop()
            finally:
                await follow.aclose()
            assert code == 0
            assert "Aborted" not in err and "Traceback" not in err
            # what was shown was acknowledged: a later recv gets nothing again
            again = await wa(tmp_path / "b", "--json", "recv", "--timeout", "0.2")
            assert lines(again) == []


async def test_ctrl_c_ends_other_commands_with_exit_130(tmp_path):
    with trio.fail_after(DEADLINE):
        async with run_cluster(1) as cluster:
            link = await Running.start(tmp_path / "new", "--json", "link", "--relay",
                                       cluster.urls["n1"], "--name", "laptop")
            try:
                assert "code" in json.loads(await link.line())  # now waiting for approval
                code, err = await link.stop()
            finally:
                await link.aclose()
            assert code == 130
            assert "interrupted" in err and "Aborted" not in err
            assert not (tmp_path / "new" / "state.bin").exists()
