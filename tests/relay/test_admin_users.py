"""``wa-relay admin user``: show, purge, block and unblock against a running node's
LMDB store (the node in-process, the command as its own process: a second opener
of the store, as an operator runs it)."""

from __future__ import annotations

import json
from contextlib import ExitStack
from dataclasses import dataclass

import pytest
import trio

from cli.client import BacklogDone, init_account, open_client
from cli.errors import RelayError
from cli.session.state import create_state
from relay.config import load_node_config
from relay.config.cluster_files import init_cluster
from relay.testing import LocalCluster, child_env, free_base_port, tool


async def drain(client) -> list:
    out = []
    async for event in client.receive():
        if isinstance(event, BacklogDone):
            return out
        out.append(event)
    raise AssertionError("receive ended before the backlog marker")


@dataclass
class Result:
    exit_code: int
    output: str


async def _admin(*args: str) -> Result:
    done = await trio.run_process([*tool("wa-relay"), "admin", "user", *args], check=False,
                                  capture_stdout=True, capture_stderr=True, env=child_env())
    return Result(done.returncode, (done.stdout + done.stderr).decode())


async def test_show_purge_block_unblock(tmp_path) -> None:
    [node_toml] = init_cluster(tmp_path / "c", 1, free_base_port(2), admin_base_port=0)
    config = load_node_config(node_toml)
    with trio.fail_after(30), ExitStack() as stack:
        async with trio.open_nursery() as nursery:
            cluster = LocalCluster(nursery, [config])
            await cluster.start_all()
            url = cluster.url("n1")
            alice, bob = (stack.enter_context(create_state(tmp_path / n, name=n, relay_url=url))
                          for n in ("alice", "bob"))
            for state in (alice, bob):
                init_account(state)
                state.prefs.receipts = state.prefs.hold_requests = False  # strangers, counted
                async with open_client(state):
                    pass
            async with open_client(alice) as client:
                for i in range(3):
                    await client.send_text(bob.user_id, f"hello {i}")

            shown = await _admin("show", "--config", str(node_toml), bob.user_id, "--json")
            assert shown.exit_code == 0, shown.output
            info = json.loads(shown.output)
            assert (info["home"], info["homed_here"], info["device_list_version"]) == (
                "n1", True, 1)
            [dev] = info["devices"]
            assert dev["device_id"] == 0 and dev["queued"] == 3 and dev["queued_bytes"] > 0
            assert dev["one_time_keys"] > 0

            purged = await _admin("purge", "--config", str(node_toml), bob.user_id,
                                  "--device", "0")
            assert (purged.exit_code, "3 envelopes deleted" in purged.output) == (0, True)
            async with open_client(bob) as client:  # nothing left to deliver
                assert await drain(client) == []

            blocked = await _admin("block", "--config", str(node_toml), bob.user_id,
                                   "--reason", "spam")
            assert blocked.exit_code == 0, blocked.output
            with pytest.raises(RelayError) as refused:
                async with open_client(bob):
                    pass
            assert refused.value.code == "unauthorized"
            text = (await _admin("show", "--config", str(node_toml), bob.user_id)).output
            assert "BLOCKED (spam)" in text and "device 0: 0 queued" in text
            assert (await _admin("unblock", "--config", str(node_toml),
                                 bob.user_id)).exit_code == 0
            async with open_client(bob):
                pass
            nursery.cancel_scope.cancel()
