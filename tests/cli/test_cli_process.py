"""``wa-cli`` as a subprocess (``python -m cli``) against in-process relay nodes: a retried
``init``, Ctrl-C and node restarts under ``recv --follow``, two processes on one home."""

from __future__ import annotations

import json
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
