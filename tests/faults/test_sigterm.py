"""``python -m faults`` stopped with SIGTERM (a CI job's timeout, ``kill``) stops its
node processes and its fork server and prints the report of the rounds so far; it
used to die at once and leave every ``wa-relay`` node running."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import trio


def _running_under(workdir: str) -> dict[int, str]:
    """``{pid: command line}`` of live processes that name ``workdir`` (the nodes'
    configs), other than the run itself."""
    found = {}
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if workdir in cmd and " -m faults " not in cmd and int(pid) != os.getpid():
            found[int(pid)] = cmd
    return found


async def test_sigterm_stops_the_nodes_and_reports(tmp_path):
    workdir = str(tmp_path / "run")
    proc = await trio.lowlevel.open_process(
        [sys.executable, "-m", "faults", "--seed", "3", "--rounds", "40", "--kinds",
         "client_reset", "--workdir", workdir], stdout=subprocess.PIPE,
        stderr=subprocess.PIPE)
    try:
        with trio.fail_after(120):
            err = b""
            while b"round 1/" not in err:  # set up, nodes running, a round done
                chunk = await proc.stderr.receive_some()
                assert chunk, err.decode()
                err += chunk
            assert _running_under(workdir), "the nodes should be running now"
            proc.send_signal(signal.SIGTERM)
            out = b""
            while chunk := await proc.stdout.receive_some():
                out += chunk
            code = await proc.wait()
        assert code == 1, (code, out.decode())
        assert b"stopped by SIGTERM" in out, out.decode()
        assert _running_under(workdir) == {}
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        for pid in _running_under(workdir):  # what a failed run left behind
            os.kill(pid, signal.SIGKILL)
