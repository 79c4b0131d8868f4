"""Smoke test of the issue-9 relay scenario (``python -m bench --only relay``) at tiny
sizes: real ``wa-relay serve`` processes (one node, then two) under the load
generator process. Every figure the issue asks for exists and is positive; no
speed is asserted."""

from __future__ import annotations

import io
import math

import pytest
import trio

from bench.__main__ import run_bench, with_required
from bench.relay import SCALE_ENV, STOP_TIMEOUT, BenchError, NodeProcesses, run_load, scale

DEADLINE = 90  # seconds (the run takes a few; nodes are processes)

KEYS = [
    "relay.online.msgs_per_s", "relay.online.server_us_per_msg", "relay.online.p50_ms",
    "relay.online.p99_ms", "relay.store.msgs_per_s", "relay.store.server_us_per_msg",
    "relay.drain.msgs_per_s", "relay.drain.server_us_per_msg", "relay.federated.msgs_per_s",
    "relay.federated.server_us_per_msg", "relay.paced.p50_ms", "relay.paced.p99_ms",
    "relay.limits.checks_us", "relay.limits.overhead_pct", "ws.frames",
]
# A difference of two CPU measurements (charged minus plain enqueues), clamped at 0: at
# the quick sizes the true cost (a few µs) is within the noise of a shared machine, so
# 0 is an honest reading; it must exist and be a finite, non-negative number.
DIFFERENCE_KEYS = ["relay.limits.accounting_us"]


async def test_quick_relay_scenario_writes_every_key(monkeypatch):
    monkeypatch.setenv(SCALE_ENV, "0.025")  # 50 messages per sender
    out = io.StringIO()
    with trio.fail_after(DEADLINE):
        report = await run_bench(["relay"], quick=True, out=out)
    figures = report.as_dict()
    for key in KEYS:
        assert key in figures, key
        assert math.isfinite(figures[key]) and figures[key] > 0, (key, figures[key])
    for key in DIFFERENCE_KEYS:
        assert key in figures, key
        assert math.isfinite(figures[key]) and figures[key] >= 0, (key, figures[key])
    assert figures["relay.online.p99_ms"] >= figures["relay.online.p50_ms"]
    text = out.getvalue()
    assert "16 senders -> 16 receivers, 50 messages each" in text
    assert "answers {'stored': 800}" in text  # every send of the online phase stored


def test_relay_requires_the_ws_ceiling():
    assert with_required(["relay"]) == ["relay", "ws"]
    assert with_required(["ws", "relay"]) == ["ws", "relay"]


def test_scale_knob(monkeypatch):
    monkeypatch.delenv(SCALE_ENV, raising=False)
    assert scale(quick=False) == 1.0
    assert 0 < scale(quick=True) < 1
    monkeypatch.setenv(SCALE_ENV, "0.5")
    assert scale(quick=False) == 0.5
    monkeypatch.setenv(SCALE_ENV, "-1")
    with pytest.raises(ValueError, match=SCALE_ENV):
        scale(quick=False)


def test_a_dead_node_fails_the_run_with_its_stderr(tmp_path):
    nodes = NodeProcesses(tmp_path, 1)
    try:
        nodes.start()
        nodes.procs["n1"].kill(STOP_TIMEOUT)
        with pytest.raises(BenchError, match="load generator exited 1") as info:
            run_load(nodes, ["online"], 5)
        assert "node n1 died" in str(info.value)
    finally:
        nodes.stop()
