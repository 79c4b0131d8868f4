"""``wa-relay cluster --reshape`` as a real process on LMDB: 3 -> 5 -> 2 nodes with a
kill -9 of the whole process (every node, both sides of every handoff) while the
first handoff runs; clients (the client library, in the test) keep every message,
and one whose saved home was removed finds its new home by itself."""

from __future__ import annotations

import json
import time
from contextlib import ExitStack
from pathlib import Path

import trio

from cli.client import BacklogDone, Message, init_account, open_client
from cli.features.group_messaging import create_group, send_group_text
from cli.features.linking import link_device
from cli.session.state import create_state, open_state
from relay.config import load_cluster
from relay.config.ring import Ring
from relay.testing import LoggedProcess
from storage.lmdb import LmdbStorage

from .procs import free_base_port, subprocess_env, tool

DEADLINE = 60.0
NAMES = ("alice", "bob", "carol", "dave", "erin", "frank")


class LocalClusterProcess:
    """``wa-relay cluster`` runs under one data dir, one process at a time."""

    def __init__(self, root: Path, base_port: int) -> None:
        self.root = root
        self.data = root / "data"
        self.base_port = base_port
        self.child: LoggedProcess | None = None
        self.runs = 0

    def start(self, nodes: int, *, reshape: bool = False) -> None:
        """Start ``nodes`` nodes (and those a reshape removes); return once all are ready."""
        self.runs += 1
        argv = [*tool("wa-relay"), "cluster", "--nodes", str(nodes), "--base-port",
                str(self.base_port), "--data", str(self.data)]
        self.child = LoggedProcess(argv + (["--reshape"] if reshape else []),
                                   stdout_log=self.root / f"run{self.runs}.out",
                                   stderr_log=self.root / f"run{self.runs}.err",
                                   env=subprocess_env(), name=f"cluster-{self.runs}")
        deadline = time.monotonic() + 30
        expected = nodes  # every node of both sizes runs while a reshape is unfinished
        if reshape and (self.data / "cluster.toml").exists():
            expected = max(nodes, len(self.ring(previous=True)))
        for _ in range(expected):
            if self.child.next_ready(deadline) is None:
                raise AssertionError(f"cluster did not start:\n{self.child.stderr_tail()}")

    def wait_line(self, prefix: str) -> str:
        assert self.child is not None
        line = self.child.next_line(prefix, time.monotonic() + 30)
        assert line is not None, self.child.stderr_tail()
        return line

    def ring(self, *, previous: bool = False) -> Ring:
        nodes = {n.id: n for n in load_cluster(self.data / "cluster.toml")}
        prev = self.data / "cluster.toml.prev"
        if previous and prev.exists():
            nodes.update({n.id: n for n in load_cluster(prev)})
        return Ring(nodes.values())

    def stop(self) -> None:
        if self.child is not None:
            code, killed = self.child.stop(15)
            assert (code, killed) == (0, False), self.child.stderr_tail()
            self.child = None

    def kill(self) -> None:
        assert self.child is not None
        self.child.kill(15)
        self.child = None


async def texts_of(state) -> list[tuple[str, str]]:
    """Connect, take the backlog (incoming messages), disconnect."""
    out = []
    async with open_client(state, connect_timeout=5) as client:
        async for event in client.receive():
            if isinstance(event, BacklogDone):
                return out
            if isinstance(event, Message) and event.direction == "in":
                out.append((event.sender_user, event.text))
    raise AssertionError("receive ended before the backlog marker")


async def test_cluster_reshape_3_5_2_with_kill_9_during_handoff(tmp_path) -> None:
    base = free_base_port(12)
    cluster = LocalClusterProcess(tmp_path, base)
    with trio.fail_after(DEADLINE), ExitStack() as stack:
        stack.callback(lambda: cluster.child and cluster.child.kill(15))
        cluster.start(3)
        ring = cluster.ring()
        users, ids, laptops = {}, {}, {}
        for name in NAMES:  # homes on every node; each client saved a node's URL
            for i in range(100):
                state = stack.enter_context(create_state(
                    tmp_path / f"{name}-{i}", name=name, relay_url="ws://unset"))
                init_account(state)
                state.prefs.receipts = state.prefs.hold_requests = False  # strangers, counted
                want = f"n{NAMES.index(name) % 3 + 1}"
                if ring.home(state.user_id).id == want:
                    break
            state.relay_url = ring.node(want).url
            state.save()
            users[name], ids[name] = state, state.user_id
            async with open_client(state, connect_timeout=5):
                pass
        for name in ("alice", "carol"):
            async with open_client(users[name]) as client:
                await link_device(client, tmp_path / f"{name}-laptop", "laptop", history=False)
            laptops[name] = stack.enter_context(open_state(tmp_path / f"{name}-laptop"))
            laptops[name].prefs.receipts = laptops[name].prefs.hold_requests = False
        async with open_client(users["alice"]) as client:
            await create_group(client, "team", [ids[n] for n in NAMES if n != "alice"])
        for state in [*users.values(), *laptops.values()]:
            await texts_of(state)
        expected: dict[str, list[tuple[str, str]]] = {n: [] for n in NAMES}

        async def send_round(tag: str, per_user: int = 2) -> None:
            for i, name in enumerate(NAMES):
                to = NAMES[(i + 1) % len(NAMES)]
                async with open_client(users[name]) as client:
                    for k in range(per_user):
                        await client.send_text(ids[to], f"{tag} {name}->{to} {k}")
                        expected[to].append((ids[name], f"{tag} {name}->{to} {k}"))
            async with open_client(users["alice"]) as client:
                await send_group_text(client, "team", f"{tag} group")
            for name in NAMES[1:]:
                expected[name].append((ids["alice"], f"{tag} group"))

        await send_round("before", per_user=10)  # queued for offline devices
        cluster.stop()

        cluster.start(5, reshape=True)  # the handoff starts as the nodes come up ...
        cluster.kill()                   # ... and every node dies with kill -9
        assert (cluster.data / "cluster.toml.prev").exists()
        cluster.start(5, reshape=True)  # resumes
        cluster.wait_line("reshaped:")
        # Usually the killed run had not finished (the old homes retry a new node that
        # was not up yet with a backoff of >= 0.15 s, and the kill came right after the
        # last ready), so the resumed run still moves users. Whether it does depends on
        # timing and on where the six random accounts hash (about 1 run in 20 none moves
        # to n4/n5), so it is not asserted; what is asserted is that every message
        # arrives exactly once, in order, on every device, and the homes moved.
        assert not (cluster.data / "cluster.toml.prev").exists()
        await send_round("between")

        cluster.stop()
        saved = {n: users[n].relay_url for n in NAMES}
        gone = {cluster.ring().node(f"n{k}").url for k in (3, 4, 5)}
        assert set(saved.values()) & gone, "no client had saved a removed node's URL"
        cluster.start(2, reshape=True)
        line = cluster.wait_line("reshaped:")
        assert int(line.split()[2]) >= 1, line  # users moved off the removed nodes
        status = await trio.run_process(
            [*tool("wa-relay"), "status", "--data", str(cluster.data), "--json"],
            capture_stdout=True, env=subprocess_env())
        nodes = [json.loads(row) for row in status.stdout.decode().splitlines()]
        assert [(n["id"], n["handoff"]["done"]) for n in nodes] == [("n1", True), ("n2", True)]
        assert sum(n["handoff"]["users_in"] for n in nodes) == int(line.split()[2])
        await send_round("after")

        final = cluster.ring()
        for name in NAMES:  # every message once, in order; saved homes re-resolved
            assert await texts_of(users[name]) == expected[name], name
            assert users[name].relay_url == final.home(ids[name]).url
        for name, laptop in laptops.items():
            assert await texts_of(laptop) == expected[name], name
        cluster.stop()

        for node_id in ("n3", "n4", "n5"):  # the removed nodes' data is empty
            async with LmdbStorage.open(cluster.data / node_id / "data") as st:
                assert await st.list_users() == [], node_id
        for node_id in ("n1", "n2"):
            async with LmdbStorage.open(cluster.data / node_id / "data") as st:
                homed = {ids[n] for n in NAMES if final.home(ids[n]).id == node_id}
                assert set(await st.list_users()) == homed
                for uid in homed:  # device lists and one-time keys moved
                    assert await st.get_device_list(uid) is not None
                    assert await st.count_one_time_keys(uid, 0) > 0
