"""Smoke test of the issue-4 media bench scenario (``python -m bench --quick --only media``):
a 20 MiB file through wa-cli and two node processes, checked bit for bit by the scenario;
every figure exists and is positive, and no process grew by 64 MiB. No speed is asserted."""

from __future__ import annotations

import io
import math

import trio

from bench.__main__ import run_bench

DEADLINE = 120  # seconds


async def test_quick_media_scenario_prints_positive_figures():
    out = io.StringIO()
    with trio.fail_after(DEADLINE):
        report = await run_bench(["media"], quick=True, out=out)
    figures = {k: v for k, v in report.as_dict().items() if k.startswith("media.")}
    for name in ("upload_MBps", "download_MBps", "encrypt_MBps", "decrypt_MBps", "raw_tcp_MBps",
                 "raw_ws_MBps", "send_peak_MiB", "recv_peak_MiB", "text_send_peak_MiB"):
        assert math.isfinite(figures[f"media.{name}"]) and figures[f"media.{name}"] > 0, name
    for name in ("n1_growth_MiB", "n2_growth_MiB"):
        assert 0 <= figures[f"media.{name}"] < 64, (name, figures[f"media.{name}"])
    assert figures["media.send_peak_MiB"] - figures["media.text_send_peak_MiB"] < 64
    assert figures["media.recv_peak_MiB"] - figures["media.text_recv_peak_MiB"] < 64
    assert "== A 200 MiB file through wa-cli" in out.getvalue()
