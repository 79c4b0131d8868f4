"""``python -m bench.relay_load``: the load generator of the ``relay`` benchmark, run in
its own process against relay nodes running in theirs.

It creates ``--pairs`` sender and receiver accounts (one device each, lists
published at their homes), then runs the phases asked for, in order, and prints
one JSON object on stdout: ``{phase: {"messages", "seconds", "server_cpu_s",
"gen_cpu_s", "p50_ms", "p99_ms", "statuses"}}`` (latencies only where measured).

Phases (sender ``i`` sends to receiver ``i`` only):

* ``online``: receivers connected and synced; every sender sends ``--count``
  messages, pipelined (``--window`` ``send`` requests in flight per connection,
  answers matched by request id). Ends when every receiver has every message,
  acknowledged it and had a ``ping`` answered after its last ack.
* ``store``: receivers offline; ends at the last ``sent`` answer. ``messages`` is
  the number answered ``stored``.
* ``drain``: receivers connect, ``sync`` and take everything queued, acking.
* ``paced``: like ``online`` but each sender sends evenly spaced, all together at
  ``--rate`` messages/s (default: half the ``online`` rate of this run), for about
  ``--paced-seconds``.

Receivers acknowledge as a client would: cumulatively, after every
:data:`ACK_EVERY` deliveries or :data:`ACK_DELAY` seconds after a delivery.
Latency is from writing a ``send`` to the receiver reading its ``deliver``, on
one clock (this process). Server CPU is ``utime + stime`` of every ``--pid``
from ``/proc/<pid>/stat`` (all its threads), read right before the first send
and right after the end of the phase; connecting and authenticating happen
before, closing after. ``gen_cpu_s`` is this process's own CPU in the phase
(near ``seconds`` means the generator, not the node, was the limit).

With ``--cross-homes`` (a cluster of at least two nodes) sender ``i`` is homed on
node ``i mod N`` and its receiver on the next node, so every message is forwarded.
With ``--spread-addresses`` (a node served by several processes, ``urls`` in the
cluster file) sender ``i`` connects to the node's address ``i mod K`` and its
receiver to the next, so every message is stored by one process and pushed by
another (woken by the database's notification). The wire details live in
:mod:`bench.relay_wire`.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import trio

from relay.config import load_cluster
from relay.config.ring import Ring

from . import relay_wire as wire
from .stats import percentile

ACK_EVERY = 64  # deliveries
ACK_DELAY = 0.02  # seconds
PHASE_TIMEOUT = 600.0  # seconds
PHASES = ("online", "store", "drain", "paced")


class LoadError(RuntimeError):
    """A phase could not complete (an unexpected answer, a timeout)."""


def cpu_seconds(pid: int) -> float:
    """``utime + stime`` of process ``pid`` (all its threads, ended ones included), seconds.

    Raises:
        OSError: no such process.
    """
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2:].split()  # after "pid (comm) "; field 3 is fields[0]
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Pair:
    """A sender and its receiver, with their homes' URLs."""

    sender: wire.Account
    sender_url: str
    receiver: wire.Account
    receiver_url: str


class Countdown:
    """An event set once :meth:`arrive` was called ``n`` times."""

    def __init__(self, n: int) -> None:
        self.left = n
        self.event = trio.Event()
        if n <= 0:
            self.event.set()

    def arrive(self) -> None:
        """Count one arrival; the last one sets :attr:`event`."""
        self.left -= 1
        if self.left <= 0:
            self.event.set()


@dataclass
class Run:
    """What one phase shares between its tasks."""

    go: trio.Event = field(default_factory=trio.Event)
    close: trio.Event = field(default_factory=trio.Event)
    sent_at: dict[bytes, float] = field(default_factory=dict)
    latencies: list[float] = field(default_factory=list)
    statuses: Counter = field(default_factory=Counter)
    delivered: int = 0
    start: float = 0.0  # trio clock at go, for pacing (Pacer)
    transport: str = wire.DEFAULT_TRANSPORT  # the generator's WebSocket client (wire.open_ws)


class Pacer:
    """The ``paced`` phase's schedule, kept by one task for every sender: message ``k``
    of sender ``i`` (of ``n``) is written at ``start + (k + i / n) * interval``.

    One timer wake-up writes every message that is due. Trio's timers wake with the
    resolution of ``epoll_wait`` (1 ms), so a task per sender sleeping until each of
    its messages woke once per message anyway, and paid a cancel scope and a task
    switch each time; the node sees the same arrivals either way, the generator
    spends less CPU (docs/benchmarks.md, "Session 9").
    """

    def __init__(self, n: int, interval: float) -> None:
        self.interval = interval
        self.lanes: list[Callable[[int], Awaitable[None]] | None] = [None] * n
        self.finished = trio.Event()

    async def run(self, start: float, count: int) -> None:
        """Write ``count`` messages per sender on schedule from trio time ``start``
        (a lane whose window is full holds up the others: the node is saturated)."""
        n = len(self.lanes)
        try:
            for k in range(count):
                for i, send in enumerate(self.lanes):
                    assert send is not None, "every sender registers before go"
                    due = start + (k + i / n) * self.interval
                    if trio.current_time() < due:
                        await trio.sleep_until(due)
                    await send(k)
        finally:
            self.finished.set()


async def _sender(run: Run, pair: Pair, index: int, msgs: list[tuple[int, bytes, bytes]],
                  window: int, pacer: Pacer | None, done: Countdown,
                  task_status=trio.TASK_STATUS_IGNORED) -> None:
    async with wire.session(pair.sender_url, pair.sender, run.transport) as ws:
        slots = trio.Semaphore(window)
        in_flight: set[int] = set()

        async def send(k: int) -> None:
            request_id, msg_id, data = msgs[k]
            await slots.acquire()
            in_flight.add(request_id)
            run.sent_at[msg_id] = time.perf_counter()
            await ws.send_message(data)

        async def answers() -> None:
            answered = 0
            while answered < len(msgs):
                for event in wire.events(await ws.get_message()):
                    if event.kind != "answer" or event.request_id not in in_flight:
                        continue
                    answered += 1
                    in_flight.discard(event.request_id)
                    slots.release()
                    run.statuses[event.status] += 1
                    if not event.ok:
                        raise LoadError(f"send answered error {event.status!r}")

        if pacer is not None:
            pacer.lanes[index] = send
        task_status.started()
        await run.go.wait()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(answers)
            if pacer is None:
                for k in range(len(msgs)):
                    await send(k)
            else:
                await pacer.finished.wait()
        done.arrive()
        await run.close.wait()


async def _receiver(run: Run, pair: Pair, expected: int, drain: bool, done: Countdown,
                    task_status=trio.TASK_STATUS_IGNORED) -> None:
    async with wire.session(pair.receiver_url, pair.receiver, run.transport) as ws:
        if not drain:  # live: synced (empty queue) before the phase starts
            await ws.send_message(wire.sync_frame(wire.FIRST_REQUEST_ID))
            while not any(e.kind == "synced" for e in wire.events(await ws.get_message())):
                pass
        task_status.started()
        await run.go.wait()
        if drain:
            await ws.send_message(wire.sync_frame(wire.FIRST_REQUEST_ID))
        seen: set[bytes] = set()
        last_seq = acked = 0

        async def ack_timer() -> None:
            nonlocal acked
            while True:
                await trio.sleep(ACK_DELAY)
                if last_seq > acked:
                    acked = last_seq
                    with trio.CancelScope(shield=True):  # never cut a frame in half
                        await ws.send_message(wire.ack_frame(acked))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(ack_timer)
            while len(seen) < expected:
                for event in wire.events(await ws.get_message()):
                    if event.kind != "deliver":
                        continue
                    now = time.perf_counter()
                    last_seq = max(last_seq, event.seq)
                    sent = run.sent_at.get(event.msg_id)
                    if (sent is not None or drain) and event.msg_id not in seen:
                        seen.add(event.msg_id)
                        run.delivered += 1
                        if sent is not None:
                            run.latencies.append(now - sent)
                    if last_seq - acked >= ACK_EVERY:
                        acked = last_seq
                        await ws.send_message(wire.ack_frame(acked))
            nursery.cancel_scope.cancel()
        if last_seq > acked:
            await ws.send_message(wire.ack_frame(last_seq))
        # The node serves a device's requests in order: the ping's answer means
        # the last ack has been applied.
        ping_id = wire.FIRST_REQUEST_ID + 1
        await ws.send_message(wire.ping_frame(ping_id))
        while not any(e.kind == "answer" and e.request_id == ping_id
                      for e in wire.events(await ws.get_message())):
            pass
        done.arrive()
        await run.close.wait()


def _messages(pairs: list[Pair], count: int, body: bytes) -> list[list[tuple[int, bytes, bytes]]]:
    """Pre-encoded ``send`` frames per sender: ``(request_id, msg_id, frame)``."""
    out = []
    for pair in pairs:
        msgs = []
        for k in range(count):
            request_id, msg_id = wire.FIRST_REQUEST_ID + k, os.urandom(16)
            msgs.append((request_id, msg_id,
                         wire.send_frame(request_id, msg_id, pair.receiver.user_id, body)))
        out.append(msgs)
    return out


async def run_phase(phase: str, pairs: list[Pair], pids: list[int], *, count: int, window: int,
                    body: bytes, rate: float | None = None,
                    transport: str = wire.DEFAULT_TRANSPORT) -> dict:
    """Run one phase (see the module docstring) and return its figures.

    Raises:
        LoadError: a send was answered with an error, or the phase took longer
            than :data:`PHASE_TIMEOUT`. OSError, ConnectionClosed, WireError: a
            node went away or refused the handshake.
    """
    run = Run(transport=transport)
    n = len(pairs)
    senders = phase != "drain"
    receivers = phase != "store"
    batches = _messages(pairs, count, body) if senders else []
    pacer = Pacer(n, n / rate) if phase == "paced" and rate else None
    done = Countdown((n if senders else 0) + (n if receivers else 0))
    with trio.fail_after(PHASE_TIMEOUT):
        async with trio.open_nursery() as nursery:
            for i, pair in enumerate(pairs):
                if receivers:
                    await nursery.start(_receiver, run, pair, count, phase == "drain", done)
                if senders:
                    await nursery.start(_sender, run, pair, i, batches[i], window, pacer, done)
            cpu0 = sum(cpu_seconds(p) for p in pids)
            gen0 = time.process_time()
            t0 = time.perf_counter()
            run.start = trio.current_time()
            run.go.set()
            if pacer is not None:
                nursery.start_soon(pacer.run, run.start, count)
            await done.event.wait()
            seconds = time.perf_counter() - t0
            server = sum(cpu_seconds(p) for p in pids) - cpu0
            gen = time.process_time() - gen0
            run.close.set()
    messages = run.statuses["stored"] if phase == "store" else (
        run.delivered if receivers else sum(run.statuses.values()))
    result = {"messages": messages, "seconds": seconds, "server_cpu_s": server,
              "gen_cpu_s": gen, "statuses": dict(run.statuses)}
    if run.latencies:
        result["p50_ms"] = percentile(run.latencies, 50) * 1e3
        result["p99_ms"] = percentile(run.latencies, 99) * 1e3
    return result


async def make_pairs(cluster: Path, n: int, cross_homes: bool,
                     spread: bool = False) -> list[Pair]:
    """``n`` sender/receiver pairs with published device lists (see ``--cross-homes``
    and ``--spread-addresses``).

    Raises:
        ValueError: ``cross_homes`` with a one-node cluster.
    """
    ring = Ring(load_cluster(cluster))
    nodes = ring.nodes
    if cross_homes and len(nodes) < 2:
        raise ValueError("--cross-homes needs a cluster of at least two nodes")

    def account_on(node_id: str) -> wire.Account:
        while True:
            account = wire.Account()
            if ring.home(account.user_id).id == node_id:
                return account

    pairs = []
    for i in range(n):
        home = nodes[i % len(nodes)] if cross_homes else nodes[0]
        there = nodes[(i + 1) % len(nodes)] if cross_homes else nodes[0]
        sender_url, receiver_url = home.url, there.url
        if spread:  # a node served by several processes: sender and receiver on different ones
            sender_url = home.urls[i % len(home.urls)]
            receiver_url = there.urls[(i + 1) % len(there.urls)]
        pairs.append(Pair(account_on(home.id), sender_url, account_on(there.id), receiver_url))
    async with trio.open_nursery() as nursery:
        for pair in pairs:
            nursery.start_soon(wire.publish, pair.sender_url, pair.sender)
            nursery.start_soon(wire.publish, pair.receiver_url, pair.receiver)
    return pairs


async def main_async(args: argparse.Namespace) -> dict:
    """Create the pairs and run ``args.phases``; returns ``{phase: figures}``."""
    pairs = await make_pairs(args.cluster, args.pairs, args.cross_homes, args.spread_addresses)
    body = os.urandom(args.body)
    results: dict[str, dict] = {}
    for phase in args.phases:
        count = args.count
        rate = None
        if phase == "paced":
            online = results.get("online")
            rate = args.rate or (online and online["messages"] / online["seconds"] / 2)
            if not rate:
                raise LoadError("paced needs --rate or an online phase before it")
            count = max(1, min(args.count, math.ceil(rate * args.paced_seconds / args.pairs)))
        results[phase] = await run_phase(phase, pairs, args.pid, count=count,
                                         window=args.window, body=body, rate=rate,
                                         transport=args.transport)
        if rate is not None:
            results[phase]["rate"] = rate
    return results


def _phases(text: str) -> list[str]:
    names = [p for p in text.split(",") if p]
    unknown = [p for p in names if p not in PHASES]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"phases are {', '.join(PHASES)}")
    return names


def main(argv: list[str] | None = None) -> int:
    """Command line entry point: prints the JSON result; exit 0, or 1 on failure."""
    parser = argparse.ArgumentParser(prog="python -m bench.relay_load",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--cluster", type=Path, required=True, help="the nodes' cluster.toml")
    parser.add_argument("--pid", type=int, action="append", default=[],
                        help="a node process whose CPU is measured (repeatable)")
    parser.add_argument("--phases", type=_phases, default=list(PHASES),
                        help=f"comma-separated, from {','.join(PHASES)}")
    parser.add_argument("--pairs", type=int, default=16)
    parser.add_argument("--count", type=int, default=2000, help="messages per sender")
    parser.add_argument("--window", type=int, default=64, help="sends in flight per sender")
    parser.add_argument("--body", type=int, default=100, help="body bytes")
    parser.add_argument("--rate", type=float, help="paced phase: messages/s over all senders")
    parser.add_argument("--paced-seconds", type=float, default=10.0)
    parser.add_argument("--transport", choices=wire.TRANSPORTS, default=wire.DEFAULT_TRANSPORT,
                        help="the generator's WebSocket client: trio-websocket (as wa-cli; the "
                             "default) or lean (bench.lean_ws, ws:// only)")
    parser.add_argument("--cross-homes", action="store_true",
                        help="every receiver homed on another node than its sender")
    parser.add_argument("--spread-addresses", action="store_true",
                        help="a node with several addresses (processes): sender i connects to "
                             "address i, its receiver to address i+1 (modulo their number)")
    args = parser.parse_args(argv)
    try:
        results = trio.run(main_async, args)
    except (LoadError, wire.WireError, OSError, ValueError) as exc:
        print(f"relay_load: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
