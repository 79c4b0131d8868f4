"""The documented reshape of a ``wa-relay serve`` deployment (docs/operations.md,
"Reshaping a cluster"): each host (here a node directory with its own cluster file)
runs the one command ``wa-relay reshape --config node.toml --cluster new.toml``. The
running nodes pick the new file up by themselves and restart in place; the node the
new file removes hands its users over, drains and exits 0; the new node (``wa-relay
keygen``) takes users over; every queued message arrives once, in order; ``--finish``
ends the reshape without restarting anyone."""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from contextlib import ExitStack
from pathlib import Path

import trio

from cli.client import BacklogDone, Message, init_account, open_client
from cli.session.state import create_state
from relay.admin.status import cluster_status
from relay.config import load_cluster, load_node_config
from relay.config.cluster_files import format_cluster, init_cluster
from relay.config.ring import Ring
from relay.testing import LoggedProcess
from storage.lmdb import LmdbStorage

from .procs import HOST, free_base_port, subprocess_env, tool

DEADLINE = 90.0


def wa_relay(*args: str | Path) -> str:
    """Run one ``wa-relay`` command as an operator would; its stdout (exit 0 asserted)."""
    run = subprocess.run([*tool("wa-relay"), *map(str, args)], capture_output=True, text=True,
                         env=subprocess_env(), timeout=60, check=False)
    assert run.returncode == 0, run.stderr
    return run.stdout


def host_layout(data: Path, node_id: str, cluster: Path) -> Path:
    """Give node ``node_id`` a cluster file of its own (one host each); its node.toml."""
    node_toml = data / node_id / "node.toml"
    shutil.copyfile(cluster, data / node_id / "cluster.toml")
    node_toml.write_text(node_toml.read_text().replace('cluster = "../cluster.toml"',
                                                       'cluster = "cluster.toml"'))
    return node_toml


def start(root: Path, node_toml: Path, name: str) -> LoggedProcess:
    child = LoggedProcess([*tool("wa-relay"), "serve", "--config", str(node_toml)],
                          stdout_log=root / f"{name}.out", stderr_log=root / f"{name}.err",
                          env=subprocess_env(), name=name)
    assert child.next_ready(time.monotonic() + 30) is not None, child.stderr_tail()
    return child


async def handoff_done(data: Path, node_ids: list[str]) -> bool:
    cluster = load_cluster(data / node_ids[0] / "cluster.toml")
    admin = {n: load_node_config(data / n / "node.toml").admin_url for n in node_ids}
    states = await cluster_status(cluster, admin, Ring(cluster).version, 5)
    return all(st.as_dict().get("handoff", {}).get("done") for st in states)


async def texts_of(state) -> list[str]:
    out = []
    async with open_client(state, connect_timeout=5) as client:
        async for event in client.receive():
            if isinstance(event, BacklogDone):
                return out
            if isinstance(event, Message) and event.direction == "in":
                out.append(event.text)
    raise AssertionError("receive ended before the backlog marker")


async def test_one_command_per_host_reshapes_serve_nodes(tmp_path) -> None:
    base = free_base_port(10)
    data = tmp_path / "data"
    procs: dict[str, LoggedProcess] = {}
    with trio.fail_after(DEADLINE), ExitStack() as stack:
        stack.callback(lambda: [p.kill(15) for p in procs.values() if p.running])
        init_cluster(data, 3, base, HOST, tls=False)
        old_file = data / "cluster.toml"
        tomls = {f"n{k}": host_layout(data, f"n{k}", old_file) for k in (1, 2, 3)}
        for node_id, node_toml in tomls.items():
            procs[node_id] = start(tmp_path, node_toml, node_id)
        ring = Ring(load_cluster(old_file))
        states: list = []
        per_node = dict.fromkeys(("n1", "n2", "n3"), 0)
        for i in range(200):  # two users on every home, n3's included
            if min(per_node.values()) >= 2:
                break
            state = stack.enter_context(create_state(tmp_path / f"u{i}", name=f"u{i}",
                                                     relay_url=ring.node("n1").url))
            init_account(state)
            state.prefs.receipts = state.prefs.hold_requests = False  # strangers, counted
            home = ring.home(state.user_id).id
            if per_node[home] >= 2:
                continue
            per_node[home] += 1
            async with open_client(state, connect_timeout=5):
                pass
            states.append(state)
        expected: dict[str, list[str]] = {s.user_id: [] for s in states}
        for i, state in enumerate(states):  # each writes to the next, who is offline
            to = states[(i + 1) % len(states)]
            async with open_client(state, connect_timeout=5) as client:
                for k in range(3):
                    await client.send_text(to.user_id, f"{i}->{k}")
                    expected[to.user_id].append(f"{i}->{k}")

        # the operator: a key for the new host's node, a new cluster file without n3
        (data / "n4").mkdir(mode=0o700)
        entry = wa_relay("keygen", "--key-file", data / "n4" / "node.key", "--id", "n4",
                         "--url", f"ws://{HOST}:{base + 6}")
        new_file = tmp_path / "new-cluster.toml"
        kept = [n for n in load_cluster(old_file) if n.id != "n3"]
        new_file.write_text(format_cluster(kept) + "\n" + entry)
        wa_relay("sign-cluster", "--cluster", new_file, "--key", data / "cluster.key",
                 "--version", "2")
        n4_toml = data / "n4" / "node.toml"
        n4_toml.write_text(re.sub(r"(?m)^admin_port = \d+", f"admin_port = {base + 7}",
                                  re.sub(r"(?m)^port = \d+", f"port = {base + 6}",
                                         tomls["n3"].read_text().replace('id = "n3"',
                                                                         'id = "n4"'))))
        tomls["n4"] = host_layout(data, "n4", old_file)
        # ... and on every host, the one command
        for node_toml in tomls.values():
            assert "installed" in wa_relay("reshape", "--config", node_toml,
                                           "--cluster", new_file)
        procs["n4"] = start(tmp_path, tomls["n4"], "n4")
        for node_id in ("n1", "n2", "n3"):  # the running nodes restart by themselves
            again = await trio.to_thread.run_sync(procs[node_id].next_ready,
                                                  time.monotonic() + 30)
            assert again is not None, procs[node_id].stderr_tail()
        removed = procs.pop("n3")  # hands its users over, drains, exits 0 by itself
        assert await trio.to_thread.run_sync(removed.reap, 60) == 0, removed.stderr_tail()
        assert "drained" in (data / "n3" / "node.log").read_text()
        async with LmdbStorage.open(data / "n3" / "data") as st:
            assert await st.list_users() == []
            assert await st.outbox_list() == []
        while not await handoff_done(data, ["n1", "n2", "n4"]):  # noqa: ASYNC110 - other processes: poll, bounded
            await trio.sleep(0.2)

        new_ring = Ring(load_cluster(new_file))
        for state in states:
            assert await texts_of(state) == expected[state.user_id]
            assert state.relay_url == new_ring.home(state.user_id).url
        for node_id in ("n1", "n2", "n4"):  # done everywhere: forget the previous file
            assert "removed" in wa_relay("reshape", "--config", tomls[node_id], "--finish")
        async with open_client(states[0], connect_timeout=5) as client:
            await client.send_text(states[1].user_id, "after")
        assert await texts_of(states[1]) == ["after"]
        for node_id in list(procs):
            code, killed = procs.pop(node_id).stop(30)
            assert (code, killed) == (0, False), node_id
            assert (data / node_id / "node.log").read_text().count("restarting the node") == (
                0 if node_id == "n4" else 1)
