"""The side-by-side probes of docs/benchmarks.md run and read what they report."""

from __future__ import annotations

import pytest

from bench import commit_handover
from bench.relay_ab import parse_commit_totals
from relay.admin.metrics import NodeMetrics


def test_commit_totals_read_from_a_nodes_metrics() -> None:
    metrics = NodeMetrics("n1", "00")
    assert parse_commit_totals(metrics.render().decode()) == (0.0, 0.0, 0.0)
    metrics.observe_batch(12, 0.004)
    metrics.observe_batch(30, 0.002)
    commits, seconds, ops = parse_commit_totals(metrics.render().decode())
    assert (commits, ops) == (2.0, 42.0)
    assert seconds == pytest.approx(0.006)


def test_commit_handover_runs_both_ways(capsys, tmp_path) -> None:
    assert commit_handover.main(["--seconds", "0.1", "--rounds", "1", "--every", "10",
                                 "--dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "medians, hand-over off" in out
    assert "medians, hand-over 1 ms" in out
