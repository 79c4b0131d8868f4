"""Side-by-side relay measurements for a shared machine: ``python -m bench.relay_ab``.

Starts one single-node ``wa-relay serve`` cluster per source tree given with
``--code`` (each node imports the project from that tree: ``PYTHONPATH``; the
current checkout if none is given) and runs the same phase of
:mod:`bench.relay_load` against each in turn, alternating the order every round,
so that load from other jobs hits every variant alike. Prints, per round and as
medians: the node's CPU per message (``utime + stime`` over the phase, from
``/proc``), messages per second, and (phases with receivers) the send-to-deliver
p50 / p99, the load generator's CPU as a share of a core, and the node's group
commits in the run (from its ``/metrics``: ``wa_relay_commit_seconds`` and
``wa_relay_commit_batch_ops``): how many, ops per commit and the mean time of one
(ops, commit and fsync in the commit thread, and its wait for the GIL after the
fsync). CPU per message is the figure to compare on a busy machine; latencies
follow the neighbours' load, and a commit time well above the disk's fsync
time is the commit thread waiting for the GIL or for a CPU.

Examples::

    git archive main | tar -x -C /tmp/base
    python -m bench.relay_ab --code /tmp/base --code . --rate 1000 --rate 3000
    python -m bench.relay_ab --code /tmp/base --code . --phase store,drain --rounds 5

Not a test and not part of ``python -m bench``: a tool for comparing changes to the
message path (docs/benchmarks.md, "Paced latency, the unbatched path").
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import tempfile
import urllib.request
from pathlib import Path

from bench.relay import NodeProcesses, run_load
from relay.config import load_node_config

_COMMIT_METRICS = re.compile(
    r"^(wa_relay_commit_seconds_(?:sum|count)|wa_relay_commit_batch_ops_sum) ([0-9.e+-]+)$",
    re.MULTILINE)


def commit_totals(admin_url: str | None) -> tuple[float, float, float]:
    """``(commits, seconds, ops)`` so far from a node's ``/metrics`` (zeros without an
    admin listener).

    Raises:
        OSError: the node did not answer.
    """
    if admin_url is None:
        return 0.0, 0.0, 0.0
    with urllib.request.urlopen(f"{admin_url}/metrics", timeout=10) as response:
        return parse_commit_totals(response.read().decode())


def parse_commit_totals(text: str) -> tuple[float, float, float]:
    """``(commits, seconds, ops)`` from a node's ``/metrics`` text (Prometheus format)."""
    got = {name: float(value) for name, value in _COMMIT_METRICS.findall(text)}
    return (got.get("wa_relay_commit_seconds_count", 0.0),
            got.get("wa_relay_commit_seconds_sum", 0.0),
            got.get("wa_relay_commit_batch_ops_sum", 0.0))


def main(argv: list[str] | None = None) -> int:
    """Run the comparison (see the module docstring); returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m bench.relay_ab", description=__doc__.split("\n")[0])
    parser.add_argument("--code", action="append", default=[],
                        help="a source tree for one node (repeat; default: this checkout)")
    parser.add_argument("--phase", default="paced",
                        help="relay_load phases run each time, the first is measured "
                             "(paced, online, store,drain)")
    parser.add_argument("--rate", action="append", type=float, default=[],
                        help="paced: messages/s over all senders (repeat)")
    parser.add_argument("--seconds", type=float, default=4.0, help="paced: seconds per run")
    parser.add_argument("--count", type=int, default=2000, help="messages per sender (other phases)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--transport", default=None,
                        help="the load generator's WebSocket client (bench.relay_load "
                             "--transport: trio-websocket, the default, or lean)")
    args = parser.parse_args(argv)
    codes = [str(Path(c).resolve()) for c in args.code] or [str(Path.cwd())]
    phases = args.phase.split(",")
    paced = phases[0] == "paced"
    rates = (args.rate or [1000.0]) if paced else [0.0]
    rows: dict[tuple[float, str], list[tuple[float, ...]]] = {}
    saved = os.environ.get("PYTHONPATH")
    with tempfile.TemporaryDirectory(prefix="wa-bench-ab-") as tmp:
        nodes: dict[str, NodeProcesses] = {}
        try:
            for i, code in enumerate(codes):
                os.environ["PYTHONPATH"] = code  # the node process imports this tree
                nodes[code] = NodeProcesses(Path(tmp) / f"v{i}", 1)
                nodes[code].start(drop_unknown_keys=True)
            admin = {code: load_node_config(Path(tmp) / f"v{i}" / "n1" / "node.toml").admin_url
                     for i, code in enumerate(codes)}
            if saved is None:
                os.environ.pop("PYTHONPATH", None)
            else:
                os.environ["PYTHONPATH"] = saved
            for r in range(args.rounds):
                order = codes if r % 2 == 0 else codes[::-1]
                for rate in rates:
                    for code in order:
                        extra = ("--rate", str(rate), "--paced-seconds", str(args.seconds)) \
                            if paced else ()
                        if args.transport is not None:
                            extra += ("--transport", args.transport)
                        before = commit_totals(admin[code])
                        figures = run_load(nodes[code], phases, args.count, *extra)[phases[0]]
                        commits, seconds, ops = (b - a for a, b in zip(
                            before, commit_totals(admin[code]), strict=True))
                        n = figures["messages"]
                        row = (figures["server_cpu_s"] / n * 1e6, n / figures["seconds"],
                               figures.get("p50_ms", 0.0), figures.get("p99_ms", 0.0),
                               figures["gen_cpu_s"] / figures["seconds"] * 100,
                               seconds / max(commits, 1) * 1e3, ops / max(commits, 1))
                        rows.setdefault((rate, code), []).append(row)
                        print(f"round {r} {code} rate {rate:g}: node {row[0]:.0f} us/msg, "
                              f"{row[1]:.0f} msg/s, p50 {row[2]:.1f} p99 {row[3]:.1f} ms, "
                              f"generator {row[4]:.0f} % of a core; {commits:.0f} commits "
                              f"of {row[6]:.1f} ops, {row[5]:.2f} ms each "
                              f"(load {os.getloadavg()[0]:.1f})", flush=True)
        finally:
            for proc in nodes.values():
                proc.stop()
    print("medians:")
    for (rate, code), got in sorted(rows.items()):
        cpu, rate_out, p50, p99, gen, commit_ms, per_commit = (
            statistics.median(x) for x in zip(*got, strict=True))
        print(f"{code} rate {rate:g}: node {cpu:.0f} us/msg, {rate_out:.0f} msg/s, "
              f"p50 {p50:.1f} p99 {p99:.1f} ms, generator {gen:.0f} %, commits of "
              f"{per_commit:.1f} ops, {commit_ms:.2f} ms each (n={len(got)})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
