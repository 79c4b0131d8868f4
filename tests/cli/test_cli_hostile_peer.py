"""What a hostile peer controls (its declared name, texts, group and file names) cannot
pass for a contact or forge rows in ``wa-cli`` output: ``wa-cli`` as a subprocess
(``python -m cli``) against an in-process relay node."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import trio
from cli_cluster import run_cluster

DEADLINE = 60


async def wa(home, *args, check=True) -> subprocess.CompletedProcess:
    """Run ``wa-cli --home HOME ARGS`` (human output unless ARGS has ``--json``)."""
    proc = await trio.run_process(
        [sys.executable, "-m", "cli", "--home", str(home), *args],
        capture_stdout=True, capture_stderr=True, check=False, stdin=subprocess.DEVNULL,
    )
    if check:
        assert proc.returncode == 0, proc.stderr.decode()
    return proc


async def wa_json(home, *args) -> list[dict]:
    out = (await wa(home, "--json", *args)).stdout.decode()
    return [json.loads(line) for line in out.split("\n") if line]


async def new_user(tmp_path, relay: str, home: str, name: str) -> str:
    (made,) = await wa_json(tmp_path / home, "init", "--name", name, "--relay", relay)
    return made["user_id"]


async def test_an_unknown_sender_cannot_pass_for_a_contact(tmp_path):
    with trio.fail_after(DEADLINE):
        async with run_cluster(1) as cluster:
            relay = cluster.urls["n1"]
            alice = await new_user(tmp_path, relay, "alice", "alice")
            bob = await new_user(tmp_path, relay, "bob", "bob")
            mallory = await new_user(tmp_path, relay, "mallory", "alice")  # claims to be alice
            await wa(tmp_path / "bob", "contacts", "add", "alice", alice)

            await wa(tmp_path / "alice", "send", bob, "from the real alice")
            await wa(tmp_path / "mallory", "send", bob, "from mallory")
            real, fake = await wa_json(tmp_path / "bob", "recv", "--timeout", "0.2")
            assert (real["from"], real["from_name"]) == (alice, "alice")
            assert "declared_name" not in real
            assert (fake["from"], fake["from_name"], fake["declared_name"]) == (
                mallory, None, "alice")

            await wa(tmp_path / "alice", "send", bob, "again alice")
            await wa(tmp_path / "mallory", "send", bob, "again mallory")
            human = (await wa(tmp_path / "bob", "recv", "--timeout", "0.2")).stdout.decode()
            rows = [re.sub(r"^\[[^]]+\] ", "", line) for line in human.splitlines()]
            assert rows == ["alice: again alice",
                            f"~alice (unknown {mallory[:12]}\u2026): again mallory"]

            # the same in a group that mallory creates and writes to
            await wa(tmp_path / "mallory", "group", "create", "team", bob)
            await wa(tmp_path / "mallory", "send", "--group", "team", "hi team")
            got = await wa(tmp_path / "bob", "recv", "--timeout", "0.2")
            assert f"unknown {mallory[:12]}\u2026 added you to group 'team'" in got.stderr.decode()
            rows = [re.sub(r"^\[[^]]+\] ", "", line) for line in got.stdout.decode().splitlines()]
            assert rows == [f"~alice (unknown {mallory[:12]}\u2026) @ team: hi team"]
            (row,) = await wa_json(tmp_path / "bob", "history", "--limit", "1")
            assert (row["from_name"], row["declared_name"], row["group"]) == (None, "alice", "team")
