"""Aggregate 1:1 throughput: many sender devices at once, each to its own live
recipient on another home node of the 3-node LMDB cluster.

A node answers one device's requests in order, so a single sender cannot fill
the storage layer's group commit; concurrent senders can. Sender ``i`` is homed
on node ``i mod 3`` and its recipient on the next node, so every send crosses a
node-to-node link. Same figures as the send scenario, over all pairs together.
"""

from __future__ import annotations

import time
from contextlib import AsyncExitStack, ExitStack

import trio

from cli.client import open_client

from .client_costs import TEXT_SIZE
from .cluster import account_on, open_bench_cluster
from .scenario import BenchContext
from .send import DELIVERY_TIMEOUT, Inbox, RunResult, olm_us_per_message, pipeline, report_run

FULL = (16, 100, 4)  # pairs, messages per sender, sends in flight per sender
QUICK = (4, 50, 4)


async def run(ctx: BenchContext) -> None:
    """Scenario: ``pairs`` senders at once, ``per_sender`` messages each."""
    r = ctx.report
    pairs, per_sender, depth = QUICK if ctx.quick else FULL
    olm_us = await olm_us_per_message(ctx)
    with ExitStack() as stack:
        async with open_bench_cluster(3, ctx.tmp / "nodes") as cluster, AsyncExitStack() as ac:
            nodes = sorted(cluster.urls)
            senders = [account_on(cluster, ctx.tmp, f"s{i}", nodes[i % 3], stack)
                       for i in range(pairs)]
            receivers = [account_on(cluster, ctx.tmp, f"r{i}", nodes[(i + 1) % 3], stack)
                         for i in range(pairs)]
            r.note(f"{pairs} sender devices -> {pairs} live recipients on other homes, "
                   f"{per_sender} {TEXT_SIZE}-character texts each, {depth} in flight per sender")
            rx = [await ac.enter_async_context(open_client(s)) for s in receivers]
            tx = [await ac.enter_async_context(open_client(s)) for s in senders]
            inboxes = [Inbox() for _ in range(pairs)]
            async with trio.open_nursery() as nursery:
                for inbox, client in zip(inboxes, rx, strict=True):
                    await nursery.start(inbox.run, client)
                results: list[RunResult] = []

                async def one(i: int, n: int, d: int, total: int) -> None:
                    results.append(await pipeline(tx[i], receivers[i].user_id, n, d, f"p{i}"))
                    await inboxes[i].expect(total).wait()

                with trio.fail_after(DELIVERY_TIMEOUT):
                    async with trio.open_nursery() as warm:  # sessions, device lists
                        for i in range(pairs):
                            warm.start_soon(one, i, 2, 1, 2)
                results.clear()
                cpu0 = time.process_time()
                with trio.fail_after(DELIVERY_TIMEOUT):
                    async with trio.open_nursery() as timed:
                        for i in range(pairs):
                            timed.start_soon(one, i, per_sender, depth, 2 + per_sender)
                cpu = time.process_time() - cpu0
                run = results[0]
                for other in results[1:]:
                    run = run.merge(other)
                delivered = {m: t for inbox in inboxes for m, t in inbox.delivered.items()}
                report_run(r, f"p{pairs}", f"{pairs} pairs", run, delivered, olm_us, cpu)
                nursery.cancel_scope.cancel()
