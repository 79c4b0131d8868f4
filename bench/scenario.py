"""What a benchmark scenario is: a named async function that measures and records
figures in a :class:`~bench.stats.Report`. Scenarios are listed in
``bench.__main__.SCENARIOS``; later issues add theirs there."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .stats import Report


@dataclass
class BenchContext:
    """What every scenario gets.

    Attributes:
        report: record figures here (:meth:`Report.figure`, :meth:`Report.latency`).
        quick: smoke-run sizes (``--quick``): a few seconds per scenario, figures noisy.
        tmp: a private, empty directory for this scenario (removed after the run).
        shared: measurements one scenario leaves for a later one (e.g. the client's
            per-message encrypt cost, used to compute crypto's share of send time).
    """

    report: Report
    quick: bool
    tmp: Path
    shared: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Scenario:
    """A benchmark section.

    Attributes:
        name: short key (``--only NAME``; prefix of its figure keys).
        title: the section heading.
        run: ``async (ctx) -> None``; records figures, raises on failure. Never asserts
            on speed.
        issue: the issue that introduced it.
        requires: names of scenarios whose figures this one is read against; ``--only``
            runs them too (in :data:`~bench.__main__.SCENARIOS` order).
    """

    name: str
    title: str
    run: Callable[[BenchContext], Awaitable[None]]
    issue: int = 2
    requires: tuple[str, ...] = ()
