"""Small helpers shared by the benchmark scenarios."""

from __future__ import annotations

import statistics


def percentile(samples: list[float], p: float) -> float:
    """The ``p``-th percentile (0-100) of ``samples`` by nearest rank; NaN if empty."""
    if not samples:
        return float("nan")
    ordered = sorted(samples)
    k = max(0, min(len(ordered) - 1, round(p / 100 * len(ordered)) - 1))
    return ordered[k]


def summary_ms(samples_s: list[float]) -> str:
    """``p50 x ms, p99 y ms, mean z ms`` for durations given in seconds."""
    if not samples_s:
        return "no samples"
    return (
        f"p50 {percentile(samples_s, 50) * 1e3:7.2f} ms  "
        f"p99 {percentile(samples_s, 99) * 1e3:7.2f} ms  "
        f"mean {statistics.fmean(samples_s) * 1e3:7.2f} ms"
    )


def line(name: str, value: str) -> None:
    """Print one aligned figure."""
    print(f"  {name:<44} {value}", flush=True)
