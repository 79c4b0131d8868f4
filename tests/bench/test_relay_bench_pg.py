"""Smoke test of ``python -m bench --only relay --storage postgresql`` at tiny sizes:
real ``wa-relay serve`` processes storing in a throwaway PostgreSQL (started by the
scenario itself), one home served by two processes included. Every ``relay_pg.*``
and ``relay_pg2.*`` figure exists and is positive; no speed is asserted."""

from __future__ import annotations

import io
import math

import pytest
import trio

from bench.__main__ import run_bench
from bench.relay import SCALE_ENV

KEYS = [
    "relay_pg.online.msgs_per_s", "relay_pg.online.server_us_per_msg", "relay_pg.online.p50_ms",
    "relay_pg.store.msgs_per_s", "relay_pg.store.server_us_per_msg", "relay_pg.drain.msgs_per_s",
    "relay_pg.federated.msgs_per_s", "relay_pg.paced.p99_ms",
    "relay_pg2.online.msgs_per_s", "relay_pg2.online.server_us_per_msg",
]


async def test_quick_relay_scenario_on_postgresql(monkeypatch, postgres_server) -> None:
    # postgres_server: the same binaries the scenario's own server will use (fails in
    # CI, skips elsewhere, when there are none).
    monkeypatch.setenv(SCALE_ENV, "0.01")  # 20 messages per sender
    out = io.StringIO()
    with trio.fail_after(120):
        report = await run_bench(["relay"], quick=True, out=out, storage="postgresql")
    figures = report.as_dict()
    for key in KEYS:
        assert key in figures, key
        assert math.isfinite(figures[key]) and figures[key] > 0, (key, figures[key])
    assert not any(k.startswith("relay.online") for k in figures)
    assert "answers {'stored': 320}" in out.getvalue()


async def test_unknown_storage_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown storage"):
        await run_bench(["relay"], quick=True, out=io.StringIO(), storage="sqlite")
