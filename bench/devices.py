"""Issue 3: sending to users with 1, 2, 4 and 8 devices.

For each device count ``k``, Bob's account (homed on n2) has a primary and
``k - 1`` companion devices linked with :func:`cli.features.linking.link_device`, all
connected and receiving live; Alice (n1, one device) sends ``n`` texts. Each
message is one Olm copy per device, so the figures are:

* client encrypt time per message: ``k`` Olm encryptions of one payload,
  measured apart on real sessions (``cli.crypto``);
* throughput: messages answered ``stored`` per second, and envelopes/s
  (= messages/s x ``k``);
* send-to-ack, and send-to-deliver to the *last* of Bob's devices;
* process CPU per message (all nodes and clients, every device decrypting).

Skipped with a note when the client cannot link devices (no ``cli.features.linking``).
"""

from __future__ import annotations

import importlib
import time
from contextlib import AsyncExitStack, ExitStack

import trio

from cli.client import Client, open_client
from cli.session import crypto
from cli.session.state import open_state

from .client_costs import TEXT_SIZE, sample_plaintext
from .cluster import account_on, open_bench_cluster
from .scenario import BenchContext
from .send import DELIVERY_TIMEOUT, Inbox, pipeline
from .stats import Report

DEVICE_COUNTS = (1, 2, 4, 8)
LINK_TIMEOUT = 30.0  # seconds for linking one device


def _linking():
    """``cli.features.linking`` if the client can link devices, else ``None``."""
    try:
        module = importlib.import_module("cli.features.linking")
    except ImportError:
        return None
    return module if hasattr(module, "link_device") else None


def multi_device_supported() -> bool:
    """True once ``cli`` can add a device to an account (``cli.features.linking.link_device``)."""
    return _linking() is not None


def fanout_encrypt_us(devices: int, n: int) -> float:
    """µs for one message encrypted for ``devices`` devices (one Olm session each)."""
    alice = crypto.DeviceIdentity()
    sessions = []
    for _ in range(devices):
        bob = crypto.DeviceIdentity()
        bob.generate_one_time_keys(1)
        sessions.append(alice.create_outbound_session(
            bob.curve25519, bob.unpublished_one_time_keys()[0].key))
    plain = sample_plaintext()
    start = time.perf_counter()
    for _ in range(n):
        for s in sessions:
            crypto.encrypt(s, plain)
    return (time.perf_counter() - start) / n * 1e6


async def _bob_devices(ctx: BenchContext, cluster, stack: ExitStack, ac: AsyncExitStack,
                       k: int) -> tuple[str, list[Client]]:
    """Bob's account with ``k`` devices, all connected: (user_id, clients)."""
    linking = _linking()
    primary = account_on(cluster, ctx.tmp, f"bob{k}", "n2", stack)
    clients = [await ac.enter_async_context(open_client(primary))]
    for j in range(1, k):
        home = ctx.tmp / f"bob{k}-dev{j}"
        with trio.fail_after(LINK_TIMEOUT):
            await linking.link_device(clients[0], home, f"dev{j}", history=False)
        state = stack.enter_context(open_state(home))
        state.prefs.receipts = state.prefs.hold_requests = False  # as bench.cluster.new_account
        clients.append(await ac.enter_async_context(open_client(state)))
    return primary.user_id, clients


def _report(r: Report, k: int, enc_us: float, run, inboxes: list[Inbox], cpu_s: float) -> None:
    n = len(run.acked)
    last_ack = max(t1 for _, t1 in run.acked.values())
    done = {m: max(i.delivered[m] for i in inboxes) for m in run.acked}
    rate = n / (last_ack - run.start)
    label = f"{k} device{'s' if k > 1 else ' '}"
    r.figure(f"k{k}.encrypt_us", f"[{label}] client encrypt per message", enc_us, "µs", ",.1f")
    r.figure(f"k{k}.throughput", f"[{label}] throughput (stored)", rate, "msg/s")
    r.figure(f"k{k}.envelopes", f"[{label}] envelopes stored", rate * k, "env/s")
    r.figure(f"k{k}.delivered_rate", f"[{label}] delivered to all devices",
             n / (max(done.values()) - run.start), "msg/s")
    r.latency(f"k{k}.ack", f"[{label}] send-to-ack", [t1 - t0 for t0, t1 in run.acked.values()])
    r.latency(f"k{k}.deliver", f"[{label}] send-to-deliver (last device)",
              [done[m] - t0 for m, (t0, _) in run.acked.items()])
    r.figure(f"k{k}.cpu_ms", f"[{label}] process CPU per message", cpu_s / n * 1e3,
             "ms/msg", ",.2f")


async def run(ctx: BenchContext) -> None:
    """Scenario (issue 3): fan-out to users with 1, 2, 4 and 8 devices."""
    r = ctx.report
    if not multi_device_supported():
        r.note("skipped: the client cannot add a device to an account yet "
               "(no cli.features.linking.link_device; issue 3)")
        return
    counts = (1, 2, 4) if ctx.quick else DEVICE_COUNTS
    n, depth = (40, 4) if ctx.quick else (300, 4)
    r.note(f"alice (n1, 1 device) -> bob (n2, k devices, all live); {n} {TEXT_SIZE}-character "
           f"texts per k, {depth} in flight")
    with ExitStack() as stack:
        async with open_bench_cluster(3, ctx.tmp / "nodes") as cluster, AsyncExitStack() as ac:
            alice_state = account_on(cluster, ctx.tmp, "alice", "n1", stack)
            alice = await ac.enter_async_context(open_client(alice_state))
            for k in counts:
                enc_us = await trio.to_thread.run_sync(fanout_encrypt_us, k, 200)
                bob_id, bobs = await _bob_devices(ctx, cluster, stack, ac, k)
                inboxes = [Inbox() for _ in bobs]
                async with trio.open_nursery() as nursery:
                    for inbox, client in zip(inboxes, bobs, strict=True):
                        await nursery.start(inbox.run, client)
                    with trio.fail_after(DELIVERY_TIMEOUT):
                        await pipeline(alice, bob_id, 3, 1, "warm")  # device list, sessions
                        for inbox in inboxes:
                            await inbox.expect(3).wait()
                        cpu0 = time.process_time()
                        run = await pipeline(alice, bob_id, n, depth, f"k{k}")
                        for inbox in inboxes:
                            await inbox.expect(3 + n).wait()
                        cpu = time.process_time() - cpu0
                    _report(r, k, enc_us, run, inboxes, cpu)
                    nursery.cancel_scope.cancel()
