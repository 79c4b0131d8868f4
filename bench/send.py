"""1:1 sends across two home nodes of a 3-node cluster (LMDB storage, in-process).

Alice is homed on n1 and Bob on n2, so every send is: Alice's client encrypts
(Olm) and saves its state -> ``send`` to n1 -> forwarded over the node-to-node
link -> durably enqueued at n2 (group commit) -> ``ok`` back -> ``stored``
answer to Alice; meanwhile n2 pushes the envelope to Bob's live connection,
whose client decrypts, saves its state and acks.

For each pipeline depth ``k`` (sends in flight), ``k`` tasks share Alice's
client and send ``n`` messages in total. Figures (see docs/benchmarks.md):

* throughput: messages answered ``stored`` per second, first send to last
  answer; one message to one device is one envelope, so this is envelopes/s;
* delivered/s: first send to the last message yielded by Bob's ``receive()``;
* send-to-ack: ``send_text`` call to its ``stored`` answer;
* send-to-deliver: ``send_text`` call to Bob's ``receive()`` yielding it;
* crypto share: (Olm encrypt + decrypt µs per message, measured apart by the
  client-cost scenario) x messages/s: the fraction of wall time spent in Olm.

A last, diagnostic run repeats one depth with both clients' state writes
skipped, to show how much of a send is the client's durable state save.
"""

from __future__ import annotations

import time
from contextlib import ExitStack
from dataclasses import dataclass, field

import trio

from cli.client import BacklogDone, Client, Message, open_client

from .client_costs import TEXT_SIZE, olm_costs
from .cluster import account_on, open_bench_cluster
from .scenario import BenchContext
from .stats import Report

DELIVERY_TIMEOUT = 120.0  # seconds for one run to be answered and delivered completely


@dataclass
class Inbox:
    """A recipient: a task iterating ``client.receive()`` that timestamps every message."""

    delivered: dict[bytes, float] = field(default_factory=dict)
    _want: int = 0
    _done: trio.Event = field(default_factory=trio.Event)

    def expect(self, total: int) -> trio.Event:
        """An event set once ``total`` distinct messages have been delivered in all."""
        self._want, self._done = total, trio.Event()
        if len(self.delivered) >= total:
            self._done.set()
        return self._done

    async def run(self, client: Client, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Receive until cancelled; ``started`` once the backlog is drained (live from then)."""
        started = False
        async for event in client.receive():
            if isinstance(event, Message):
                self.delivered.setdefault(event.msg_id, time.perf_counter())
                if len(self.delivered) >= self._want:
                    self._done.set()
            elif isinstance(event, BacklogDone) and not started:
                started = True
                task_status.started()


@dataclass
class RunResult:
    """Timings of one or more concurrent pipelines (seconds, ``time.perf_counter``)."""

    start: float
    acked: dict[bytes, tuple[float, float]]  # msg_id -> (send start, answer)
    statuses: dict[str, int]

    def merge(self, other: RunResult) -> RunResult:
        """Both runs as one (they ran at the same time)."""
        statuses = dict(self.statuses)
        for k, v in other.statuses.items():
            statuses[k] = statuses.get(k, 0) + v
        return RunResult(min(self.start, other.start), {**self.acked, **other.acked}, statuses)


async def pipeline(client: Client, to: str, n: int, in_flight: int, tag: str) -> RunResult:
    """Send ``n`` texts to ``to`` with ``in_flight`` concurrent ``send_text`` calls."""
    acked: dict[bytes, tuple[float, float]] = {}
    statuses: dict[str, int] = {}
    counter = iter(range(n))

    async def worker() -> None:
        for i in counter:
            text = f"{tag} {i:08d} ".ljust(TEXT_SIZE, "x")
            t0 = time.perf_counter()
            result = await client.send_text(to, text)
            acked[result.msg_id] = (t0, time.perf_counter())
            statuses[result.status] = statuses.get(result.status, 0) + 1

    start = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for _ in range(in_flight):
            nursery.start_soon(worker)
    return RunResult(start, acked, statuses)


def report_run(
    r: Report, key: str, label: str, run: RunResult, delivered: dict[bytes, float],
    olm_us: float | None, cpu_s: float | None = None,
) -> None:
    """Print and record throughput, delivery rate, both latencies, crypto's share and,
    given ``cpu_s`` (process CPU seconds used by the run), the process's CPU load."""
    n = len(run.acked)
    last_ack = max(t1 for _, t1 in run.acked.values())
    last_deliver = max(delivered[m] for m in run.acked)
    rate = n / (last_ack - run.start)
    statuses = ", ".join(f"{k} {v}" for k, v in sorted(run.statuses.items()))
    r.note(f"-- {label}: {n} messages ({statuses})")
    r.figure(f"{key}.throughput", f"[{label}] throughput (stored)", rate, "env/s")
    r.figure(f"{key}.delivered_rate", f"[{label}] delivered to live recipient",
             n / (last_deliver - run.start), "msg/s")
    r.latency(f"{key}.ack", f"[{label}] send-to-ack",
              [t1 - t0 for t0, t1 in run.acked.values()])
    r.latency(f"{key}.deliver", f"[{label}] send-to-deliver",
              [delivered[m] - t0 for m, (t0, _) in run.acked.items()])
    if olm_us is not None:
        r.figure(f"{key}.crypto_share", f"[{label}] Olm encrypt+decrypt, share of wall time",
                 olm_us * rate / 1e6 * 100, "%", ",.1f")
    if cpu_s is not None:
        r.figure(f"{key}.cpu", f"[{label}] process CPU, all nodes + clients",
                 cpu_s / (last_deliver - run.start) * 100, "% of a core", ",.0f")
        r.figure(f"{key}.cpu_ms", f"[{label}] process CPU per message", cpu_s / n * 1e3,
                 "ms/msg", ",.2f")


async def olm_us_per_message(ctx: BenchContext) -> float:
    """Encrypt + decrypt µs per message, from the client-cost scenario or measured now."""
    if "encrypt_us" not in ctx.shared:  # run without it (--only send): measure here
        olm = await trio.to_thread.run_sync(olm_costs, 300)
        ctx.shared["encrypt_us"], ctx.shared["decrypt_us"] = (
            olm["encrypt_prekey"], olm["decrypt_prekey"])
    return ctx.shared["encrypt_us"] + ctx.shared["decrypt_us"]


@dataclass(frozen=True, slots=True)
class SendParams:
    """Sizes: ``messages`` per run, the pipeline ``depths``, warm-up sends, and the
    depth of the diagnostic run without client state writes (0: none)."""

    messages: int
    depths: tuple[int, ...]
    warmup: int = 20
    diagnostic_depth: int = 16


FULL = SendParams(messages=1500, depths=(1, 16, 64))
QUICK = SendParams(messages=200, depths=(1, 16), warmup=5, diagnostic_depth=0)


async def _no_save() -> None:
    """Stands in for ``State.asave`` in the diagnostic run."""


async def _timed(
    alice: Client, to: str, inbox: Inbox, n: int, depth: int, total: int
) -> tuple[RunResult, float]:
    """One pipeline run, waiting until ``total`` messages have been delivered in all.

    Returns the run and the process CPU seconds it used."""
    cpu0 = time.process_time()
    with trio.fail_after(DELIVERY_TIMEOUT):
        run = await pipeline(alice, to, n, depth, f"d{depth}")
        await inbox.expect(total).wait()
    return run, time.process_time() - cpu0


async def measure(ctx: BenchContext, params: SendParams) -> None:
    """Start the cluster and both clients, then run and report every pipeline depth."""
    r = ctx.report
    olm_us = await olm_us_per_message(ctx)
    with ExitStack() as stack:
        async with open_bench_cluster(3, ctx.tmp / "nodes") as cluster:
            alice_state = account_on(cluster, ctx.tmp, "alice", "n1", stack)
            bob_state = account_on(cluster, ctx.tmp, "bob", "n2", stack)
            r.note(f"3 nodes on LMDB; alice homed on n1, bob on n2 (live); "
                   f"{TEXT_SIZE}-character texts")
            async with open_client(bob_state) as bob, open_client(alice_state) as alice:
                to = bob_state.user_id
                inbox = Inbox()
                async with trio.open_nursery() as nursery:
                    await nursery.start(inbox.run, bob)
                    total = params.warmup
                    # Warm-up: fetches Bob's device list, claims a key, opens the session.
                    await _timed(alice, to, inbox, params.warmup, 1, total)
                    for depth in params.depths:
                        total += params.messages
                        run, cpu = await _timed(alice, to, inbox, params.messages, depth, total)
                        report_run(r, f"d{depth}", f"{depth:>2} in flight", run,
                                   inbox.delivered, olm_us, cpu)
                    if params.diagnostic_depth:
                        depth = params.diagnostic_depth
                        r.note("diagnostic: both clients skip their durable state save "
                               "(not a correct client)")
                        alice_state.asave = bob_state.asave = _no_save
                        try:
                            total += params.messages
                            run, cpu = await _timed(alice, to, inbox, params.messages, depth,
                                                    total)
                        finally:
                            del alice_state.asave, bob_state.asave
                        report_run(r, f"nosave_d{depth}", f"{depth:>2} no-save",
                                   run, inbox.delivered, olm_us, cpu)
                    nursery.cancel_scope.cancel()


async def run(ctx: BenchContext) -> None:
    """Scenario: 1:1 send throughput and latency across two homes."""
    await measure(ctx, QUICK if ctx.quick else FULL)
