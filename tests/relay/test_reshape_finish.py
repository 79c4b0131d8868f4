"""``wa-relay reshape --finish`` asks the node before it forgets the previous cluster
file (docs/operations.md, "Reshaping a cluster", "A stuck handoff"). Before, it just
deleted ``<cluster>.prev``: run too early, the node forgot the previous ring and the
state of users it had not handed over (or whose handoff was stuck) was stranded.

Real nodes on 127.0.0.1 from a cluster layout on disk (LMDB), reshaped 2 -> 3; the
operator's command runs as a real ``wa-relay`` process against n1's ``node.toml``.
n3's address is a :class:`RefusingFront` (tests/relay/test_attacks_handoff_refused.py)
that refuses the handoff of n1's user for good until it is told to stop refusing.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import trio
from relay_harness import UserDevice, publish
from test_attacks_handoff_refused import RefusingFront

from relay.admin.reshape import prepare_local_reshape
from relay.admin.status import http_get
from relay.config import load_node_config
from relay.config.cluster_files import init_cluster
from relay.config.ring import Ring
from relay.protocol.frames import Error
from relay.testing import LocalCluster, child_env, free_base_port, free_ports, tool

DEADLINE = 60


async def _finish(node_toml: Path, *extra: str) -> tuple[int, str]:
    """Run ``wa-relay reshape --config node_toml --finish`` as an operator would."""
    done = await trio.run_process(
        [*tool("wa-relay"), "reshape", "--config", str(node_toml), "--finish", *extra],
        check=False, capture_stdout=True, capture_stderr=True, env=child_env())
    return done.returncode, (done.stdout + done.stderr).decode()


async def _handoff(admin: str) -> dict:
    _, body = await http_get(admin + "/health", 5)
    return json.loads(body)["handoff"]


async def _until(admin: str, **wanted: object) -> None:
    """Poll n1's ``/health`` until its ``handoff`` has the ``wanted`` values (the test's
    deadline bounds it)."""
    while True:
        handoff = await _handoff(admin)
        if all(handoff.get(k) == v for k, v in wanted.items()):
            return
        await trio.sleep(0.05)


async def test_finish_refuses_until_the_node_says_its_handoff_is_done(
        tmp_path, nursery) -> None:
    root = tmp_path / "cluster"
    base = free_base_port(6)  # nodes base .. base+2, admin listeners base+3 .. base+5
    with trio.fail_after(DEADLINE):
        files = init_cluster(root, 2, base, admin_base_port=base + 3, tls=False)
        cluster = LocalCluster(nursery, [load_node_config(p) for p in files])
        await cluster.start("n1")
        n1_toml, prev = files[0], root / "cluster.toml.prev"
        admin = cluster.config("n1").admin_url or ""
        assert admin.endswith(str(base + 3))

        assert prepare_local_reshape(root, 3, base, "127.0.0.1", base + 3, tls=False) == (2, 3)
        new = [load_node_config(root / f"n{k}" / "node.toml") for k in (1, 2, 3)]
        old_ring, new_ring = cluster.ring, Ring(new[0].cluster)
        mover = UserDevice()  # a user at n1 whose new home is n3
        while not (old_ring.home(mover.user_id).id == "n1"
                   and new_ring.home(mover.user_id).id == "n3"):
            mover = UserDevice()
        assert not isinstance(await publish(cluster.url("n1"), mover), Error)

        # n1 still serves the old ring: it has not taken the reshape up
        code, out = await _finish(n1_toml)
        assert code == 2 and "has not taken the reshape up" in out, out
        assert prev.exists()

        # n1 restarts with both files; n3 is not up yet: its user remains
        cluster.stop("n1")
        (hidden,) = free_ports(1)
        front = RefusingFront(base + 2, f"ws://127.0.0.1:{hidden}", "handoff_put",
                              "bad_request")
        cluster.configs = [dataclasses.replace(c, port=hidden) if c.id == "n3" else c
                           for c in new]
        await cluster.start("n2")
        await cluster.start("n1")
        handoff = await _handoff(admin)
        assert (handoff["reshaping"], handoff["remaining"], handoff["done"]) == (True, 1, False)
        code, out = await _finish(n1_toml)
        assert code == 2, out
        assert "node n1's handoff is not done: 1 users to hand over" in out, out
        assert "would strand" in out and prev.exists()
        code, out = await _finish(files[1])  # n2 has nobody to hand over, but waits for n1
        assert code == 2, out
        assert "node n2's handoff is not done: users may still come in from n1" in out, out

        # n3 comes up behind a front that refuses the user for good: stuck (n1 restarts
        # to try at once, not after the backoff its failed tries grew meanwhile)
        await cluster.start("n3")
        await nursery.start(front.serve)  # after n3: it connects every link through at once
        cluster.stop("n1")
        await cluster.start("n1")
        await _until(admin, stuck=1)
        code, out = await _finish(n1_toml)
        assert code == 2, out
        assert "1 users to hand over (1 STUCK)" in out, out
        assert f"handoff of {mover.user_id} to n3 STUCK: refused 3 times (bad_request" in out
        assert "'A stuck handoff'" in out and prev.exists()
        code, out = await _finish(n1_toml, "--force")  # a node that answers is not overridden
        assert code == 2 and "STUCK" in out and prev.exists(), out

        # the new home is fixed; the old home restarts (docs/operations.md, "A stuck
        # handoff"): the user moves, the handoff is done
        front.refusing = False
        cluster.stop("n1")
        await cluster.start("n1")
        await _until(admin, done=True, stuck=0, remaining=0)
        code, out = await _finish(n1_toml)
        assert (code, out.startswith("reshape finished: "), out.endswith("/cluster.toml.prev "
                                                                          "removed\n")) == (
            0, True, True), out
        assert not prev.exists()
        assert await _finish(n1_toml) == (0, "no reshape to finish\n")


async def test_finish_refuses_when_the_node_does_not_answer_unless_forced(tmp_path) -> None:
    root = tmp_path / "cluster"
    base = free_base_port(6)
    with trio.fail_after(DEADLINE):
        files = init_cluster(root, 2, base, admin_base_port=base + 3, tls=False)
        prepare_local_reshape(root, 3, base, "127.0.0.1", base + 3, tls=False)
        prev = root / "cluster.toml.prev"
        code, out = await _finish(files[0])  # nothing runs: n1 is down
        assert code == 1, out
        assert f"node n1 does not answer (http://127.0.0.1:{base + 3}/health" in out, out
        assert "is it running?" in out and "--force" in out and prev.exists()
        code, out = await _finish(files[0], "--force")
        assert code == 0, out
        assert "finishing anyway (--force)" in out and "cluster.toml.prev removed" in out
        assert not prev.exists()
