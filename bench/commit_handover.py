"""How long a durable write waits for the LMDB commit thread while the event loop is busy:
``python -m bench.commit_handover``.

The node's commit thread (:mod:`storage._group_commit`) needs the GIL twice per batch
(when it wakes for a submission and when its fsync returns); a busy event loop holds
the GIL until the interpreter's switch interval (5 ms by default) forces a hand-over.
This measures that wait in isolation, in one process: a real
:class:`~storage._group_commit.GroupCommitWriter` on an LMDB environment with fsync
(as the node opens it), a Trio task keeping the loop busy (pure-Python work in
slices of ``--slice`` ms with a checkpoint between slices, as a loaded node runs
task after task), and a task submitting one one-record op every ``--every`` ms and
timing it from ``submit`` to its answer. It runs the writer with the hand-over
interval off (the interpreter's default switch interval throughout) and on
(:data:`storage._group_commit.HANDOVER_INTERVAL`), alternately, and prints the
latency percentiles and the loop's work done (slices per second: what the hand-overs
cost the loop). A one-record fsync'd commit on the same disk is timed apart, for scale.

Not a test and not part of ``python -m bench``: a probe for docs/benchmarks.md,
"Session 5: paced latency".
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import lmdb
import trio

from storage import _lmdb_layout as L
from storage._group_commit import HANDOVER_INTERVAL, GroupCommitWriter
from storage._lmdb_env import open_env

from .stats import percentile


def _busy(ms: float) -> None:
    """Pure-Python work for about ``ms`` milliseconds (holds the GIL)."""
    end = time.perf_counter() + ms / 1000
    n = 0
    while time.perf_counter() < end:
        n += 1


async def measure(env: lmdb.Environment, dbs: L.Dbs, handover: float, *, seconds: float,
                  every: float, slice_ms: float) -> dict[str, float]:
    """One run: ``{"p50_ms", "p99_ms", "max_ms", "slices_per_s", "n"}`` (see the module
    docstring); ``handover`` 0 leaves the switch interval alone."""
    writer = GroupCommitWriter(env, dbs, handover_interval=handover)
    latencies: list[float] = []
    slices = 0

    def op(txn: lmdb.Transaction, dbs: L.Dbs) -> None:
        txn.put(b"handover", os.urandom(100), db=dbs.meta)

    async def busy(stop: trio.Event) -> None:
        nonlocal slices
        while not stop.is_set():
            _busy(slice_ms)
            slices += 1
            await trio.lowlevel.checkpoint()

    async with trio.open_nursery() as nursery:
        await nursery.start(writer.serve)
        stop = trio.Event()
        nursery.start_soon(busy, stop)
        start = trio.current_time()
        k = 0
        while trio.current_time() - start < seconds:
            await trio.sleep_until(start + k * every / 1000)
            k += 1
            t0 = time.perf_counter()
            await writer.submit(op, size=100)
            latencies.append(time.perf_counter() - t0)
        elapsed = trio.current_time() - start
        stop.set()
        writer.close()
    return {"p50_ms": percentile(latencies, 50) * 1e3, "p99_ms": percentile(latencies, 99) * 1e3,
            "max_ms": max(latencies) * 1e3, "slices_per_s": slices / elapsed,
            "n": len(latencies)}


def fsync_ms(env: lmdb.Environment, dbs: L.Dbs, n: int = 50) -> float:
    """Median milliseconds of a one-record durable commit, nothing else running."""
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        with env.begin(write=True) as txn:
            txn.put(b"handover", os.urandom(100), db=dbs.meta)
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


async def main_async(args: argparse.Namespace) -> None:
    """Run the comparison and print it."""
    with tempfile.TemporaryDirectory(prefix="wa-bench-handover-", dir=args.dir) as tmp:
        env = await open_env(Path(tmp), 64 << 20, 16, 1.0)
        try:
            dbs = L.Dbs.open(env)
            print(f"one-record durable commit alone: {fsync_ms(env, dbs):.2f} ms (median); "
                  f"load average {os.getloadavg()[0]:.1f}")
            rows: dict[float, list[dict[str, float]]] = {0.0: [], HANDOVER_INTERVAL: []}
            for r in range(args.rounds):
                for handover in (0.0, HANDOVER_INTERVAL) if r % 2 == 0 else (
                        HANDOVER_INTERVAL, 0.0):
                    got = await measure(env, dbs, handover, seconds=args.seconds,
                                        every=args.every, slice_ms=args.slice)
                    rows[handover].append(got)
                    print(f"round {r} hand-over {handover * 1e3:g} ms: submit-to-answer p50 "
                          f"{got['p50_ms']:.2f} p99 {got['p99_ms']:.2f} max {got['max_ms']:.1f}"
                          f" ms; loop slices {got['slices_per_s']:.0f}/s (n={got['n']:.0f})",
                          flush=True)
            for handover, got in rows.items():
                med = {k: statistics.median(g[k] for g in got) for k in got[0]}
                label = "off (5 ms switch interval)" if not handover else f"{handover * 1e3:g} ms"
                print(f"medians, hand-over {label}: p50 {med['p50_ms']:.2f} p99 "
                      f"{med['p99_ms']:.2f} ms, loop slices {med['slices_per_s']:.0f}/s")
        finally:
            env.close()


def main(argv: list[str] | None = None) -> int:
    """Command line entry point."""
    parser = argparse.ArgumentParser(prog="python -m bench.commit_handover",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="per run")
    parser.add_argument("--every", type=float, default=5.0, help="ms between submissions")
    parser.add_argument("--slice", type=float, default=0.2, help="ms of loop work per task step")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--dir", default=None, help="where the LMDB environment goes")
    trio.run(main_async, parser.parse_args(argv))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
