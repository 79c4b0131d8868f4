"""``python -m bench [--quick] [--only NAME ...] [--list] [--json PATH]``: run the
benchmark scenarios (Trio) and print their figures, section by section.

Everything runs on 127.0.0.1, in this process (relay nodes with LMDB storage in a
temporary directory, clients, the raw ceilings) except in the scenarios that start
processes (``media``; ``relay``: node processes and a load-generator process).
Figures are printed, never asserted. ``--quick`` is a smoke run of a few seconds
with small sizes (noisy figures).

To add a scenario (e.g. issue 4: groups, media), write ``async def run(ctx: BenchContext) -> None`` in its own module, recording
figures with ``ctx.report``, and append a :class:`Scenario` to :data:`SCENARIOS`.
See docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import TextIO

import trio

from . import ceilings, client_costs, devices, groups, media, relay, send, send_many
from .scenario import BenchContext, Scenario
from .stats import Report

SCENARIOS: list[Scenario] = [
    Scenario("client", "Client cost per message (Olm, device state), no network",
             client_costs.run),
    Scenario("send", "1:1 send, alice (n1) -> bob (n2), 3-node LMDB cluster", send.run),
    Scenario("send_many", "1:1 send, many sender devices at once (aggregate)", send_many.run),
    Scenario("devices", "Send to users with 1, 2, 4, 8 devices (issue 3)", devices.run, issue=3),
    Scenario("groups", "Group send at 8, 64, 256 member devices (issue 4)", groups.group_send_cost, issue=4),
    Scenario("media", "A 200 MiB file through wa-cli and two node processes (issue 4)", media.run,
             issue=4),
    Scenario("ws", "Ceiling: raw trio-websocket, one connection", ceilings.transport),
    Scenario("lmdb", "Ceiling: raw LMDB durable puts with batching", ceilings.disk),
    Scenario("storage", "Ceiling: LmdbStorage group commit (enqueue)", ceilings.group_commit),
    Scenario("relay", "Relay alone: node processes under a load generator process (issue 9)",
             relay.run, issue=9, requires=("ws",)),
]
"""Scenarios in run order; the client-cost one first (the send scenarios use its figures)."""


def check_names(names: list[str]) -> None:
    """Raise ValueError naming the first unknown scenario in ``names``."""
    known = [s.name for s in SCENARIOS]
    for name in names:
        if name not in known:
            raise ValueError(f"unknown scenario {name!r}; known: {', '.join(known)}")


def with_required(names: list[str]) -> list[str]:
    """``names`` plus every scenario they require (transitively), without repeats."""
    by_name = {s.name: s for s in SCENARIOS}
    out: list[str] = []
    todo = list(names)
    while todo:
        name = todo.pop(0)
        if name not in out:
            out.append(name)
            todo.extend(by_name[name].requires)
    return out


async def run_bench(
    names: list[str] | None = None, *, quick: bool = False, out: TextIO | None = None,
    storage: str = "lmdb",
) -> Report:
    """Run the named scenarios (all if ``None``) in :data:`SCENARIOS` order.

    Each gets a fresh temporary directory, removed afterwards. A named scenario
    brings the scenarios it requires (:attr:`Scenario.requires`).

    Returns:
        The report holding every figure.

    Raises:
        ValueError: an unknown scenario name. Any error a scenario raises.
    """
    check_names(names or [])
    if names:
        names = with_required(names)
    report = Report(out=out or sys.stdout)
    shared: dict = {"storage": storage}  # the relay scenario's node storage (--storage)
    print(f"wa-relay benchmark ({'quick' if quick else 'full'}): Python "
          f"{platform.python_version()}, {platform.system()} {platform.machine()}, "
          f"{os.cpu_count()} CPUs", file=report.out, flush=True)
    started = time.perf_counter()
    for scenario in SCENARIOS:
        if names and scenario.name not in names:
            continue
        report.section(scenario.name, f"{scenario.title}  [{scenario.name}]")
        t0 = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix=f"wa-bench-{scenario.name}-") as tmp:
            await scenario.run(BenchContext(report, quick, Path(tmp), shared))
        report.note(f"({time.perf_counter() - t0:.1f} s)")
    print(f"\ntotal {time.perf_counter() - started:.1f} s", file=report.out, flush=True)
    return report


def main(argv: list[str] | None = None) -> int:
    """Command line entry point; returns the exit code (0 ok, 2 usage error)."""
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run of a few seconds, small sizes")
    parser.add_argument("--only", action="append", metavar="NAME",
                        help="run only this scenario (repeatable); see --list")
    parser.add_argument("--list", action="store_true", help="list the scenarios and exit")
    parser.add_argument("--storage", choices=relay.STORAGES, default="lmdb",
                        help="node storage of the relay scenario (postgresql: keys relay_pg.*)")
    parser.add_argument("--json", metavar="PATH", type=Path,
                        help="also write {figure key: value} as JSON to PATH")
    args = parser.parse_args(argv)
    if args.list:
        for s in SCENARIOS:
            print(f"{s.name:<10} {s.title}")
        return 0
    try:
        check_names(args.only or [])
    except ValueError as exc:
        parser.error(str(exc))
    report = trio.run(lambda: run_bench(args.only, quick=args.quick, storage=args.storage))
    if args.json is not None:
        args.json.write_text(json.dumps(report.as_dict(), indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
