"""Smoke test of the issue-4 bench scenario (``python -m bench --quick --only groups``):
it runs end to end on in-process LMDB nodes and every figure exists and is positive.
No speed is asserted."""

from __future__ import annotations

import io
import math

import trio

from bench.__main__ import run_bench

DEADLINE = 60  # seconds


async def test_quick_groups_scenario_prints_positive_figures():
    out = io.StringIO()
    with trio.fail_after(DEADLINE):
        report = await run_bench(["groups"], quick=True, out=out)
    figures = {k: v for k, v in report.as_dict().items() if k.startswith("groups.")}
    for k in (8, 64):
        for name in ("encrypt_us", "olm_equiv_us", "key_share_ms", "send_p50", "send_p99",
                     "messages", "copies"):
            value = figures[f"groups.k{k}.{name}"]
            assert math.isfinite(value) and value > 0, (k, name, value)
        # copies/s is messages/s times the member devices
        assert math.isclose(figures[f"groups.k{k}.copies"], figures[f"groups.k{k}.messages"] * k)
    assert "== Group send at 8, 64, 256 member devices" in out.getvalue()
    assert "statuses" not in out.getvalue()  # every raw group_send was answered stored
