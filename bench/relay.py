"""Issue 9: the relay alone, at full speed, as processes. Relay nodes run as
``wa-relay serve`` processes (LMDB, fsync on every commit); the load generator
(:mod:`bench.relay_load`) runs in another process and speaks the wire protocol with
real accounts and signed device lists but opaque 100-byte bodies (no Olm), so
the figures are the relay's own.

* one node: ``online`` (16 senders -> 16 connected receivers, 2,000 messages each,
  64 sends in flight per sender, receivers acking as a client would), ``store``
  (receivers offline: durable ``stored`` answers), ``drain`` (receivers connect
  and take everything, acking), ``paced`` (online at half the online rate,
  evenly spaced);
* two nodes: ``federated``, the online load with every receiver homed on the
  other node than its sender (CPU of both nodes).

Server CPU is ``utime + stime`` of the node processes from ``/proc``, over the
phase.

The nodes run every abuse check of issue 11 on every message; the load generator
speaks for 32 accounts from one address, so the rate limits are raised in their
``node.toml`` (:data:`BENCH_SETTINGS`) to stay out of the way, while the checks
still run. ``relay.limits.*`` (:mod:`bench.limits_cost`) says what the checks and
the byte accounting cost per message, and their share of
``relay.online.server_us_per_msg``.

With ``--storage postgresql`` (``python -m bench --only relay --storage postgresql``)
the nodes store in PostgreSQL instead (figure keys ``relay_pg.*``): a throwaway
server started the way the tests start theirs
(:mod:`storage.testing.postgres_server`), but with ``fsync=on`` like LMDB, one
schema per node, each node's pool opened in full at start (8 connections), and
the server's processes (postmaster and every backend) counted in server CPU; then
also ``relay_pg2.online``: one node served by two processes over one schema (two
addresses in the cluster file), each sender connected to one process and its
receiver to the other, so every message is stored by one process and pushed by the
other after the database's notification. ``ws.frames`` (raw trio-websocket) is measured in the same run by the
``ws`` scenario, which ``--only relay`` pulls in. Message counts scale with the
environment variable :data:`SCALE_ENV` (a factor, e.g. ``0.1``; ``--quick``: 0.025).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio

from relay.testing import LoggedProcess, ProcessCluster, ProcessFailed, child_env

from . import limits_cost
from .scenario import BenchContext

SCALE_ENV = "WA_BENCH_RELAY_SCALE"
PAIRS = 16
COUNT = 2000  # messages per sender at scale 1
WINDOW = 64
BODY = 100  # bytes
QUICK_SCALE = 0.125
"""250 messages per sender: the quick drain (8 µs a message now) must span several of
/proc's 10 ms CPU ticks, or its CPU per message measures 0 (0.025 did: 6 ms)."""
READY_TIMEOUT = 30.0  # seconds for a node to print its ready line
STOP_TIMEOUT = 10.0
STORAGES = ("lmdb", "postgresql")
MAX_DROPPED_KEYS = 30  # NodeProcesses.start(drop_unknown_keys=True)
_UNKNOWN_KEY = re.compile(r"unknown key '([A-Za-z0-9_]+)'")
PG_POOL = 8  # connections per node, all opened at start (their backends' CPU is counted)
BENCH_SETTINGS = {"send_rate": 1e9, "send_burst": 1e9, "send_bytes_rate": 1e12,
                  "send_bytes_burst": 1e12, "peer_forward_rate": 1e9, "peer_forward_burst": 1e9,
                  "account_create_burst": 1e6, "put_devices_burst": 1e6,
                  "upload_keys_burst": 1e6, "claim_keys_burst": 1e9}
"""``node.toml`` settings of the benchmark's nodes: one load generator, one address,
32 accounts sending as fast as they can; every check still runs."""


def load_timeout(count: int) -> float:
    """Seconds one load-generator run may take for ``count`` messages per sender
    (then it is killed): generous, but short for smoke runs."""
    return 60.0 + 0.5 * count


class BenchError(RuntimeError):
    """A node or the load generator of the relay scenario did not behave."""


def scale(quick: bool) -> float:
    """The message-count factor: :data:`SCALE_ENV` if set, else 0.125 quick, 1 full.

    Raises:
        ValueError: the variable is not a positive number.
    """
    text = os.environ.get(SCALE_ENV)
    if text is None:
        return QUICK_SCALE if quick else 1.0
    value = float(text)
    if not value > 0:
        raise ValueError(f"{SCALE_ENV} must be a positive number, not {text!r}")
    return value


class NodeProcesses:
    """``wa-relay serve`` processes of a fresh ``n``-node cluster laid out under ``root``
    (:class:`relay.testing.ProcessCluster`); ``processes`` maps a node id to how many
    processes serve it (one address each; default one).

    Attributes:
        cluster_file: the cluster's ``cluster.toml``.
        procs: ``{name: LoggedProcess}`` once :meth:`start` returned (``nK`` for a
            node's first process, ``nK-k`` for its others).
    """

    def __init__(self, root: Path, n: int, storage_url: Callable[[str], str] | None = None,
                 processes: dict[str, int] | None = None) -> None:
        self.root = root
        self.n = n
        self.storage_url = storage_url  # node id -> storage URL (None: the LMDB default)
        self.processes = processes
        self.cluster_file = root / "cluster.toml"
        self.procs: dict[str, LoggedProcess] = {}
        self.cluster: ProcessCluster | None = None

    def start(self, drop_unknown_keys: bool = False) -> None:
        """Lay out the cluster and start every process; return once all listen.

        ``drop_unknown_keys``: for nodes that run an older source tree (``bench.relay_ab``),
        a ``node.toml`` setting the node refuses as ``unknown key 'K'`` (added since) is
        removed from that node's file and the process started again.

        Raises:
            BenchError: a process exited or printed no ready line in time.
        """
        settings = {k: repr(float(v)) for k, v in BENCH_SETTINGS.items()}
        self.cluster = ProcessCluster(self.root, self.n, processes=self.processes,
                                      storage_url=self.storage_url, settings=settings)
        for node_id, urls in self.cluster.urls.items():
            for k in range(len(urls)):
                self.procs[f"{node_id}-{k}" if k else node_id] = self._start_one(
                    node_id, k, drop_unknown_keys)

    def _start_one(self, node_id: str, k: int, drop_unknown_keys: bool) -> LoggedProcess:
        assert self.cluster is not None
        for _ in range(MAX_DROPPED_KEYS):
            try:
                return self.cluster.start(node_id, k, READY_TIMEOUT)
            except ProcessFailed as exc:
                unknown = _UNKNOWN_KEY.search(str(exc))
                if not drop_unknown_keys or unknown is None:
                    raise BenchError(str(exc)) from exc
                config = self.cluster.configs[node_id]
                config.write_text("".join(
                    line for line in config.read_text().splitlines(keepends=True)
                    if line.split(" = ", 1)[0].strip() != unknown.group(1)))
        raise BenchError(f"{node_id}: more than {MAX_DROPPED_KEYS} unknown settings")

    def pids(self) -> list[int]:
        """The node processes' ids."""
        return [p.pid for p in self.procs.values()]

    def stop(self) -> None:
        """SIGTERM every node (SIGKILL after :data:`STOP_TIMEOUT`) and reap it."""
        for proc in self.procs.values():
            proc.terminate()
        for proc in self.procs.values():
            proc.stop(STOP_TIMEOUT)


def postgres_pids(server: Any) -> list[int]:
    """The postmaster of ``server`` (a :class:`~storage.testing.postgres_server.LocalPostgres`)
    and every process it has forked now (backends,
    WAL writer, checkpointer...), from ``/proc``."""
    postmaster = int((server.root / "data" / "postmaster.pid").read_text().split()[0])
    pids = [postmaster]
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        if int(text[text.rindex(")") + 2:].split()[1]) == postmaster:
            pids.append(int(stat.parent.name))
    return pids


def run_load(nodes: NodeProcesses, phases: list[str], count: int, *extra: str,
             extra_pids: list[int] = ()) -> dict:
    """Run :mod:`bench.relay_load` against ``nodes`` (blocking); returns its JSON.

    Raises:
        BenchError: it failed, or a node died meanwhile (with the stderr tails).
    """
    argv = [sys.executable, "-m", "bench.relay_load", "--cluster", str(nodes.cluster_file),
            "--phases", ",".join(phases), "--pairs", str(PAIRS), "--count", str(count),
            "--window", str(WINDOW), "--body", str(BODY), *extra]
    for pid in [*nodes.pids(), *extra_pids]:
        argv += ["--pid", str(pid)]
    root = Path(__file__).resolve().parent.parent
    timeout = load_timeout(count)
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                              env=child_env(), cwd=root, stdin=subprocess.DEVNULL, check=False)
    except subprocess.TimeoutExpired as exc:
        raise BenchError(f"the load generator took more than {timeout:g} s") from exc
    dead = {nid: p.stderr_tail(1500) for nid, p in nodes.procs.items() if not p.running}
    if done.returncode != 0 or dead:
        raise BenchError(f"load generator exited {done.returncode}: {done.stderr[-3000:]}"
                         + "".join(f"\nnode {nid} died: {tail}" for nid, tail in dead.items()))
    return json.loads(done.stdout)


def _measure(tmp: Path, count: int, storage: str = "lmdb") -> list[dict]:
    """The process part (blocking; run in a thread): one node, then two; on
    PostgreSQL also one node served by two processes (``online`` only)."""
    server = None
    if storage == "postgresql":
        from storage.testing.postgres_server import LocalPostgres
        server = LocalPostgres.start(fsync=True)
    try:
        db = server.create_database("bench") if server is not None else ""
        runs: list[tuple[int, list[str], tuple[str, ...], dict[str, int] | None]] = [
            (1, ["online", "store", "drain", "paced"], (), None),
            (2, ["online"], ("--cross-homes",), None)]
        if server is not None:
            runs.append((1, ["online"], ("--spread-addresses",), {"n1": 2}))
        results = []
        for i, (n, phases, extra, processes) in enumerate(runs, start=1):
            url = None
            if server is not None:
                def url(node_id: str, i: int = i) -> str:
                    return server.url(db, schema=f"c{i}_{node_id}", pool_min=str(PG_POOL),
                                      pool_max=str(PG_POOL))
            nodes = NodeProcesses(tmp / f"cluster{i}", n, url, processes)
            try:
                nodes.start()
                pids = postgres_pids(server) if server is not None else []
                results.append(run_load(nodes, phases, count, *extra, extra_pids=pids))
            finally:
                nodes.stop()
        return results
    finally:
        if server is not None:
            server.stop()


def _record(ctx: BenchContext, name: str, label: str, phase: dict, latency: bool) -> float:
    r = ctx.report
    msgs = phase["messages"]
    rate = r.figure(f"{name}.msgs_per_s", f"{label}: messages/s", msgs / phase["seconds"],
                    "msg/s")
    r.figure(f"{name}.server_us_per_msg", "  server CPU per message",
             phase["server_cpu_s"] / msgs * 1e6, "µs", ",.0f")
    if latency:
        r.figure(f"{name}.p50_ms", "  send-to-deliver p50", phase["p50_ms"], "ms", ",.2f")
        r.figure(f"{name}.p99_ms", "  send-to-deliver p99", phase["p99_ms"], "ms", ",.2f")
    r.note(f"  {msgs:,} messages in {phase['seconds']:.2f} s; node CPU "
           f"{phase['server_cpu_s'] / phase['seconds']:.0%} of a core, load generator "
           f"{phase['gen_cpu_s'] / phase['seconds']:.0%}; answers {phase['statuses']}")
    return rate


async def run(ctx: BenchContext) -> None:
    """Scenario: online, store, drain and paced on one node; federated on two. With
    ``ctx.shared["storage"] == "postgresql"`` the same on PostgreSQL, keys ``relay_pg.*``."""
    r = ctx.report
    storage = ctx.shared.get("storage", "lmdb")
    if storage not in STORAGES:
        raise ValueError(f"unknown storage {storage!r}; known: {', '.join(STORAGES)}")
    count = max(1, round(COUNT * scale(ctx.quick)))
    load = os.getloadavg()[0]
    single, double, *more = await trio.to_thread.run_sync(_measure, ctx.tmp, count, storage)
    medium = "LMDB with fsync"
    if storage == "postgresql":
        r.section("relay_pg", "Relay alone on PostgreSQL: the same load, nodes storing in a "
                              "local PostgreSQL (fsync on)")
        medium = (f"PostgreSQL with fsync (a local server, Unix socket, {PG_POOL} connections "
                  "per node; server CPU includes the database's processes)")
    r.note(f"{PAIRS} senders -> {PAIRS} receivers, {count:,} messages each, {BODY} B bodies, "
           f"{WINDOW} sends in flight per sender; wa-relay serve processes, {medium}; "
           f"load average {load:.2f} before (other processes compete for the CPUs)")
    _record(ctx, "online", "online, one node", single["online"], latency=True)
    online_us = single["online"]["server_cpu_s"] / single["online"]["messages"] * 1e6
    _record(ctx, "store", "store (receivers offline), durable", single["store"], latency=False)
    _record(ctx, "drain", "drain (receivers sync and ack)", single["drain"], latency=False)
    _record(ctx, "federated", "federated 1:1 (two nodes, CPU of both)", double["online"],
            latency=True)
    paced = single["paced"]
    r.figure("paced.p50_ms", f"paced at {paced['rate']:,.0f} msg/s: send-to-deliver p50",
             paced["p50_ms"], "ms", ",.2f")
    r.figure("paced.p99_ms", "  send-to-deliver p99", paced["p99_ms"], "ms", ",.2f")
    r.note(f"  {paced['messages']:,} messages in {paced['seconds']:.2f} s "
           f"({paced['messages'] / paced['seconds']:,.0f} msg/s achieved)")
    if storage == "lmdb":
        # at least 4,000 enqueues: with fewer batches the accounting figure (a median of
        # charged-minus-plain differences) was noise and clamped to 0 at times
        cost = await trio.to_thread.run_sync(limits_cost.run_blocking, ctx.tmp / "limits",
                                             max(4000, min(8000, 4 * count)))
        r.figure("limits.checks_us", "abuse checks per message (rate limits, fan-out, quota "
                 "policy)", cost["checks_us"], "µs", ",.1f")
        r.figure("limits.accounting_us", "  byte accounting per message in LMDB (charged "
                 "minus plain enqueue CPU)", cost["accounting_us"], "µs", ",.1f")
        r.figure("limits.overhead_pct", "  together, share of online server CPU per message",
                 (cost["checks_us"] + cost["accounting_us"]) / online_us * 100, "%", ",.1f")
        r.note(f"  plain enqueue CPU {cost['plain_enqueue_us']:.1f} µs per message in the "
               "same measurement (target: checks under 5% of the online figure); "
               f"fastest batch charged minus fastest plain: "
               f"{cost['accounting_batch_min_us']:.1f} µs")
    if more:
        r.section("relay_pg2", "One home served by two relay processes over one PostgreSQL "
                               "database")
        r.note("each sender connected to one process, its receiver to the other: every "
               "message stored by one and pushed by the other, woken by NOTIFY; server CPU "
               "counts both relay processes and the database's")
        _record(ctx, "online", "online, one node, two processes", more[0]["online"],
                latency=True)
