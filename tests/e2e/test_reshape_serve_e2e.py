"""A reshape of ``wa-relay serve`` nodes (one process each) 3 -> 4, with a kill -9 of
the new node and of an old home while their handoff is pending; the status probes
(``wa-relay status``) report when every node is done; every queued message arrives once, in order."""

from __future__ import annotations

import time
from contextlib import ExitStack
from pathlib import Path

import trio

from cli.client import BacklogDone, Message, init_account, open_client
from cli.session.state import create_state
from relay.admin.reshape import prepare_local_reshape
from relay.admin.status import cluster_status
from relay.config import load_cluster, load_node_config
from relay.config.cluster_files import init_cluster
from relay.config.ring import Ring, score
from relay.testing import LoggedProcess

from .procs import HOST, free_base_port, subprocess_env, tool

DEADLINE = 90.0


class Nodes:
    """``wa-relay serve`` processes of a data dir laid out by init-cluster."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.data = root / "data"
        self.procs: dict[str, LoggedProcess] = {}

    def start(self, node_id: str) -> None:
        child = LoggedProcess([*tool("wa-relay"), "serve", "--config",
                               str(self.data / node_id / "node.toml")],
                              stdout_log=self.root / f"{node_id}.out",
                              stderr_log=self.root / f"{node_id}.err", env=subprocess_env(),
                              name=node_id)
        self.procs[node_id] = child
        assert child.next_ready(time.monotonic() + 30) is not None, child.stderr_tail()

    def kill(self, node_id: str) -> None:
        self.procs.pop(node_id).kill(15)

    def stop_all(self) -> None:
        for node_id in list(self.procs):
            code, killed = self.procs.pop(node_id).stop(15)
            assert (code, killed) == (0, False), node_id

    def close(self) -> None:
        for child in self.procs.values():
            child.kill(15)


async def status(data: Path) -> list[dict]:
    """What ``wa-relay status --data`` reports (its library function, in-process)."""
    cluster = load_cluster(data / "cluster.toml")
    admin = {n.id: load_node_config(data / n.id / "node.toml").admin_url for n in cluster}
    return [st.as_dict() for st in await cluster_status(cluster, admin, Ring(cluster).version, 5)]


async def texts_of(state) -> list[str]:
    out = []
    async with open_client(state, connect_timeout=5) as client:
        async for event in client.receive():
            if isinstance(event, BacklogDone):
                return out
            if isinstance(event, Message) and event.direction == "in":
                out.append(event.text)
    raise AssertionError("receive ended before the backlog marker")


def _moves_to_n4(user_id: str) -> bool:
    """Whether rendezvous hashing over n1..n4 homes ``user_id`` on n4 (the score depends
    on node ids only: relay.config.ring); about 1 in 4."""
    scores = {f"n{k}": score(f"n{k}", user_id) for k in range(1, 5)}
    return max(scores, key=lambda n: (scores[n], n)) == "n4"


async def test_serve_nodes_reshape_with_kill_9_of_new_and_old_home(tmp_path) -> None:
    base = free_base_port(10)
    nodes = Nodes(tmp_path)
    with trio.fail_after(DEADLINE), ExitStack() as stack:
        stack.callback(nodes.close)
        init_cluster(nodes.data, 3, base, HOST)
        for node_id in ("n1", "n2", "n3"):
            nodes.start(node_id)
        ring = Ring(load_cluster(nodes.data / "cluster.toml"))
        states = []
        for i in range(200):  # 8 users, the last one(s) until someone will move to n4
            if len(states) == 8 and any(_moves_to_n4(s.user_id) for s in states):
                break
            state = stack.enter_context(create_state(tmp_path / f"u{i}", name=f"u{i}",
                                                     relay_url=ring.node(f"n{i % 3 + 1}").url))
            init_account(state)
            state.prefs.receipts = state.prefs.hold_requests = False  # strangers, counted
            if len(states) == 7 and not any(_moves_to_n4(s.user_id) for s in states) \
                    and not _moves_to_n4(state.user_id):
                continue
            async with open_client(state, connect_timeout=5):
                pass
            states.append(state)
        expected = {s.user_id: [] for s in states}
        for i, state in enumerate(states):  # each writes to the next, who is offline
            to = states[(i + 1) % len(states)]
            async with open_client(state, connect_timeout=5) as client:
                for k in range(3):
                    await client.send_text(to.user_id, f"{i}->{k}")
                    expected[to.user_id].append(f"{i}->{k}")
        nodes.stop_all()

        assert prepare_local_reshape(nodes.data, 4, base, HOST, None) == (3, 4)
        new_ring = Ring(load_cluster(nodes.data / "cluster.toml"))
        moving = [s for s in states if new_ring.home(s.user_id).id == "n4"]
        assert moving, "nobody moves to n4"
        for node_id in ("n1", "n2", "n3"):  # the old homes start handing over to n4 ...
            nodes.start(node_id)
        old_home = ring.home(moving[0].user_id).id
        nodes.start("n4")
        nodes.kill("n4")                    # ... which dies with kill -9,
        nodes.kill(old_home)                # and so does an old home with users to move
        nodes.start(old_home)
        nodes.start("n4")
        while not all(n.get("handoff", {}).get("done") for n in await status(nodes.data)):  # noqa: ASYNC110 - other processes: poll, bounded
            await trio.sleep(0.2)
        for state in states:
            assert await texts_of(state) == expected[state.user_id]
            assert state.relay_url == new_ring.home(state.user_id).url
        nodes.stop_all()
