"""``wa-cli`` as a subprocess (``python -m cli``) against in-process relay nodes: a retried
``init``, Ctrl-C and node restarts under ``recv --follow``, two processes on one home."""

from __future__ import annotations

import json

import trio
from cli_cluster import run_cluster
from cli_procs import Running, lines, wa

from cli.client import open_client
from cli.features.linking import link_device
from cli.session.state import open_state
from relay.testing import open_local_cluster

DEADLINE = 60


async def test_init_retried_on_a_reachable_relay_succeeds_there(tmp_path):
    with trio.fail_after(DEADLINE):
        async with run_cluster(1) as cluster:
            relay = cluster.urls["n1"]
            first = await wa(tmp_path / "a", "init", "--trust-on-first-use", "--name", "old", "--relay",
                             "ws://127.0.0.1:9", check=False)
            assert first.returncode == 1 and "cannot connect" in first.stderr.decode()
            (made,) = lines(await wa(tmp_path / "a", "--json", "init", "--trust-on-first-use", "--name", "alice",
                                     "--relay", relay))
            assert made["home"] == relay
            (ident,) = lines(await wa(tmp_path / "a", "--json", "id"))
            assert (ident["name"], ident["home"], ident["user_id"]) == (
                "alice", relay, made["user_id"])


async def test_ctrl_c_stops_recv_follow_quietly_with_exit_0(tmp_path):
    with trio.fail_after(DEADLINE):
        async with run_cluster(1) as cluster:
            relay = cluster.urls["n1"]
            (bob,) = lines(await wa(tmp_path / "b", "--json", "init", "--trust-on-first-use", "--name", "bob",
                                    "--relay", relay))
            (alice,) = lines(await wa(tmp_path / "a", "--json", "init", "--trust-on-first-use",
                                      "--name", "alice", "--relay", relay))
            await wa(tmp_path / "b", "contacts", "add", "alice", alice["user_id"])  # no request
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


async def test_recv_follow_reconnects_when_the_home_node_restarts(tmp_path):
    with trio.fail_after(DEADLINE):
        async with open_local_cluster(1) as cluster:  # memory storage kept across restarts
            relay = cluster.urls["n1"]
            (bob,) = lines(await wa(tmp_path / "b", "--json", "init", "--trust-on-first-use", "--name", "bob",
                                    "--relay", relay))
            (alice,) = lines(await wa(tmp_path / "a", "--json", "init", "--trust-on-first-use",
                                      "--name", "alice", "--relay", relay))
            await wa(tmp_path / "b", "contacts", "add", "alice", alice["user_id"])  # no request
            follow = await Running.start(tmp_path / "b", "--json", "recv", "--follow")
            try:
                await wa(tmp_path / "a", "send", bob["user_id"], "before")
                assert json.loads(await follow.line())["text"] == "before"
                for n in range(2):  # two outages, one note each
                    cluster.stop("n1")
                    note = await follow.err_line()
                    assert note.startswith("lost the connection to the home node (")
                    assert note.endswith("reconnecting until interrupted")
                    await cluster.start("n1")
                    await wa(tmp_path / "a", "send", bob["user_id"], f"after {n}")
                    assert json.loads(await follow.line())["text"] == f"after {n}"
                code, err = await follow.stop()
            finally:
                await follow.aclose()
            assert code == 0
            assert err.count("lost the connection") == 2, err


async def link_a_device(bob_home, device_home, name: str) -> None:
    """bob's primary links a new device (through the library; bob runs no CLI meanwhile)."""
    with open_state(bob_home) as state:
        async with open_client(state) as client:
            await link_device(client, device_home, name, history=False)


async def test_send_shows_a_device_list_change_it_ran_into(tmp_path):
    with trio.fail_after(DEADLINE):
        async with run_cluster(1) as cluster:
            relay = cluster.urls["n1"]
            (bob,) = lines(await wa(tmp_path / "b", "--json", "init", "--trust-on-first-use", "--name", "bob",
                                    "--relay", relay))
            (alice,) = lines(await wa(tmp_path / "a", "--json", "init", "--trust-on-first-use",
                                      "--name", "alice", "--relay", relay))
            await wa(tmp_path / "b", "contacts", "add", "alice", alice["user_id"])  # no request
            await wa(tmp_path / "a", "contacts", "add", "bob", bob["user_id"])
            await wa(tmp_path / "a", "send", "bob", "one")  # alice caches bob's list

            await link_a_device(tmp_path / "b", tmp_path / "tablet", "tablet")
            changed, sent = lines(await wa(tmp_path / "a", "--json", "send", "bob", "two"))
            assert changed == {"type": "devices_changed", "user_id": bob["user_id"],
                               "name": "bob", "version": 2,
                               "added": [{"device_id": 1, "name": "tablet"}], "removed": []}
            assert sent["status"] == "stored"

            await link_a_device(tmp_path / "b", tmp_path / "watch", "watch")
            human = await wa(tmp_path / "a", "send", "bob", "three")
            assert human.stderr.decode() == "bob linked a new device (watch)\n"
            assert human.stdout.decode().startswith("sent to bob (stored)")
            # shown once: the notice that reaches alice later has nothing new
            later = lines(await wa(tmp_path / "a", "--json", "recv", "--timeout", "0.2"))
            assert [e for e in later if e.get("type") == "devices_changed"] == []
