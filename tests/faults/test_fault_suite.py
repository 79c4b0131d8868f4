"""A short seeded run of the fault suite (``make faults``, docs/reliability.md) inside
``make test``: real ``wa-relay`` processes behind the suite's proxy, real ``wa-cli``
devices, one round of each of seven fault kinds (commands forked from the suite's fork
server, faults/zygote.py, as in ``make faults``).

The other kinds are left out on purpose, not skipped: each names the issue item
whose fix it waits for (``faults.kinds.KINDS[...].known``; listed in
docs/reliability.md), and joins this list once that fix has landed. Kinds without
a known item that are still left out are listed in ``SLOW`` with the reason.
"""

from __future__ import annotations

from pathlib import Path

import trio

from faults.kinds import KINDS
from faults.nodes import NodeSet
from faults.proxy import Network
from faults.run import Config, run_suite
from relay.config import load_cluster

SMOKE_KINDS = ("node_kill", "peer_reset", "peer_silent", "send_kill", "recv_kill", "group_cut",
               "daemon_kill")
SLOW = {  # pass today, but left to make faults for time (see docs/reliability.md)
    "client_reset": "a recv --follow and a probe per round; covered by the long run",
    "client_silent": "a recv --follow and two probes per round; covered by the long run",
    "media_cut": "covered by the long run",
    "peer_dead": "passes since the peer-link keepalive; a dead peer link costs 30 s to notice",
    "client_dead": "passes since the client keepalive; covered by the long run",
    "link_cut": "passes since atomic linking (issue 15 item 12); covered by the long run",
    "recv_int": "as recv_kill; covered by the long run",
    "recv_pipe": "as recv_kill; covered by the long run",
    "disk_full": "two node restarts (~4 s each); covered by the long run",
}
GUARD = 240  # seconds for the whole run (setup ~8 s, then ~3-5 s per round on 2 cores)


def test_every_kind_is_accounted_for():
    """A kind is in the smoke run, or waits for a named fix, or is listed as slow; none
    is silently left out."""
    for name, kind in KINDS.items():
        assert (name in SMOKE_KINDS) + bool(kind.known) + (name in SLOW) == 1, name
    doc = (Path(__file__).parents[2] / "docs" / "reliability.md").read_text()
    for name in KINDS:
        assert f"`{name}`" in doc, f"docs/reliability.md does not describe {name}"


async def test_seeded_run_loses_nothing(tmp_path):
    cfg = Config(seed=15, rounds=len(SMOKE_KINDS), kinds=SMOKE_KINDS, workdir=tmp_path / "run",
                 quiet=True)
    with trio.fail_after(GUARD):
        report = await run_suite(cfg)
    data, total = report.data, report.data["total"]
    assert data["aborted"] is None, report.table
    assert data["rounds_run"] == len(SMOKE_KINDS)
    assert set(data["kinds"]) == set(SMOKE_KINDS)  # the schedule ran each kind once
    n = len(SMOKE_KINDS)
    assert total["acked"] >= 7 * n and total["expected"] >= 14 * n, report.table  # traffic ran
    assert (total["lost"], total["duplicates"], total["reordered"]) == (0, 0, 0), report.table
    assert (total["hung"], total["stuck"], total["ghosts"]) == (0, 0, 0), report.table
    assert all(n["tracebacks"] == 0 for n in data["nodes"].values()), data["nodes"]
    assert sum(n["kills"] for n in data["nodes"].values()) >= 1  # node_kill killed one
    daemon = next(r for r in data["rounds"] if r["kind"] == "daemon_kill")
    assert daemon["notes"]["life1_connected"] and "life2_exit" in daemon["notes"], daemon


async def test_plain_nodes_are_laid_out_on_ws(tmp_path):
    """``--plain``: every node listens without TLS (allow_plain) and the cluster file
    the clients pin names their proxies with ``ws://`` URLs."""
    nodes = NodeSet(tmp_path, 2, Network(dead_ttl=60.0), plain=True)
    with trio.fail_after(60):
        await nodes.init()
    nodes.point_at_proxies({"n1": 4001, "n2": 4002})
    urls = sorted(info.url for info in load_cluster(tmp_path / "data" / "cluster.toml"))
    assert urls == ["ws://127.0.0.1:4001", "ws://127.0.0.1:4002"]
    for node in nodes.nodes.values():
        text = node.config.read_text()
        assert "allow_plain = true" in text and 'tls_cert = ""' in text, text
