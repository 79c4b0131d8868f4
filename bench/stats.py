"""Figures of a benchmark run: percentiles, aligned printing, and a :class:`Report`
that both prints each figure and keeps it (for the summary, ``--json`` and tests)."""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass, field
from typing import TextIO

NAME_WIDTH = 50


def percentile(samples: list[float], p: float) -> float:
    """The ``p``-th percentile (0-100) of ``samples`` by nearest rank; NaN if empty."""
    if not samples:
        return float("nan")
    ordered = sorted(samples)
    k = max(0, min(len(ordered) - 1, math.ceil(p / 100 * len(ordered)) - 1))
    return ordered[k]


@dataclass(frozen=True, slots=True)
class Figure:
    """One measured value: ``key`` is stable (``section.name``), ``unit`` e.g. ``"msg/s"``."""

    key: str
    label: str
    value: float
    unit: str


@dataclass
class Report:
    """Prints figures under section headings as they are measured and keeps them.

    Attributes:
        figures: every figure recorded, in order.
        out: where lines are printed (default: stdout).
    """

    out: TextIO = field(default_factory=lambda: sys.stdout)
    figures: list[Figure] = field(default_factory=list)
    _section: str = ""

    def section(self, key: str, title: str) -> None:
        """Start a section: prints a heading; later figure keys are ``key.<name>``."""
        self._section = key
        print(f"\n== {title}", file=self.out, flush=True)

    def note(self, text: str) -> None:
        """Print an explanatory line (not a figure)."""
        print(f"   {text}", file=self.out, flush=True)

    def figure(self, name: str, label: str, value: float, unit: str, fmt: str = ",.0f") -> float:
        """Record and print one figure; returns ``value``.

        Args:
            name: short key within the section (``"p50_ms"``).
            label: human label printed on the left.
            value: the number; ``fmt`` is its format spec.
            unit: printed after the number.
        """
        key = f"{self._section}.{name}" if self._section else name
        self.figures.append(Figure(key, label, float(value), unit))
        print(f"   {label:<{NAME_WIDTH}} {value:>12{fmt}} {unit}", file=self.out, flush=True)
        return value

    def latency(self, name: str, label: str, samples_s: list[float]) -> tuple[float, float]:
        """Record p50 and p99 (milliseconds) of durations given in seconds, on one line.

        Returns ``(p50_ms, p99_ms)``; NaN for no samples.
        """
        p50 = percentile(samples_s, 50) * 1e3
        p99 = percentile(samples_s, 99) * 1e3
        key = f"{self._section}.{name}" if self._section else name
        self.figures.append(Figure(f"{key}_p50", f"{label} p50", p50, "ms"))
        self.figures.append(Figure(f"{key}_p99", f"{label} p99", p99, "ms"))
        print(f"   {label:<{NAME_WIDTH}} p50 {p50:8.2f} ms   p99 {p99:8.2f} ms  (n={len(samples_s)})",
              file=self.out, flush=True)
        return p50, p99

    def get(self, key: str) -> float:
        """The value of the last figure recorded under ``key``.

        Raises:
            KeyError: no such figure.
        """
        for f in reversed(self.figures):
            if f.key == key:
                return f.value
        raise KeyError(key)

    def as_dict(self) -> dict[str, float]:
        """``{key: value}`` of every figure (a later figure wins over an earlier one)."""
        return {f.key: f.value for f in self.figures}
