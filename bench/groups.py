"""Issue 4: group send cost at 8, 64 and 256 member devices (sender keys).

A 3-node LMDB cluster; alice (n1, one device) creates one group per size with
``k`` other members (one device each, homed wherever the ring puts them, so
the fan-out crosses every node). Figures per ``k``:

* client encrypt per message: one Megolm encryption of a text payload
  (:func:`cli.groups.encrypt`), which should stay flat whatever ``k``; next to it,
  what pairwise Olm would cost for ``k`` devices (one encryption per device);
* key share: the first send of a fresh sender key (one Olm copy of the key to
  each of the ``k`` devices, in as many ``send`` s as frames need, then the
  ``group_send``), milliseconds;
* client send: ``send_group_text`` call to its ``stored`` answer (encrypt, state
  save, one ``group_send``), p50/p99, sequential;
* relay fan-out: the same ``group_send`` (body and recipients captured from a
  real send, fresh ``msg_id`` each) fired with several in flight; messages/s
  answered ``stored``, and copies/s = messages/s x ``k`` (one durable queue
  entry per device, split by home, one storage transaction per home and
  message). Nobody is receiving, so this is the durable enqueue rate.
"""

from __future__ import annotations

import os
import time
from contextlib import AsyncExitStack, ExitStack

import trio
import vodozemac

from cli.client import Client, open_client
from cli.features.group_messaging import create_group, send_group_text
from cli.session import groups
from cli.session.state import State
from relay.protocol.frames import GroupSend

from .client_costs import TEXT_SIZE, sample_plaintext
from .cluster import account_on, new_account, open_bench_cluster
from .devices import fanout_encrypt_us
from .scenario import BenchContext
from .stats import Report

MEMBER_DEVICES = (8, 64, 256)
PUBLISH_CONCURRENCY = 16
FANOUT_DEPTH = 8
RUN_TIMEOUT = 300.0  # seconds for one group size


def megolm_encrypt_us(n: int) -> float:
    """µs for one Megolm encryption of a text payload (the whole client crypto of a send)."""
    out = groups.OutboundSession(vodozemac.GroupSession(), time.time())
    gid, inner = groups.new_group_id(), sample_plaintext()
    start = time.perf_counter()
    for _ in range(n):
        groups.encrypt(out, gid, inner)
    return (time.perf_counter() - start) / n * 1e6


async def _members(ctx: BenchContext, cluster, stack: ExitStack, have: list[State],
                   want: int) -> None:
    """Grow ``have`` to ``want`` published one-device accounts (any home)."""
    limit = trio.CapacityLimiter(PUBLISH_CONCURRENCY)
    fresh = [new_account(ctx.tmp / f"m{i}", f"m{i}", cluster.urls["n1"], stack)
             for i in range(len(have), want)]

    async def publish(state: State) -> None:
        async with limit, open_client(state, connect_timeout=30):
            pass

    async with trio.open_nursery() as nursery:
        for state in fresh:
            nursery.start_soon(publish, state)
    have.extend(fresh)


def _capture(client: Client) -> dict:
    """Keep the fields of the client's last ``group_send`` in the returned dict."""
    seen: dict = {}
    conn = client.connection
    original = conn.request

    async def request(frame_cls, **fields):
        if frame_cls is GroupSend:
            seen.update(fields)
        return await original(frame_cls, **fields)

    conn.request = request
    return seen


async def _fanout(client: Client, last: dict, n: int, depth: int) -> tuple[float, dict]:
    """Fire ``n`` copies of the captured ``group_send``; (seconds, statuses)."""
    todo = iter(range(n))
    statuses: dict[str, int] = {}

    async def worker() -> None:
        for _ in todo:
            answer = await client.connection.request(
                GroupSend, msg_id=os.urandom(16), body=last["body"], recipients=last["recipients"])
            statuses[answer.status] = statuses.get(answer.status, 0) + 1

    start = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for _ in range(depth):
            nursery.start_soon(worker)
    return time.perf_counter() - start, statuses


def _report(r: Report, k: int, enc: float, olm: float, share_s: float, sends: list[float],
            secs: float, n: int) -> None:
    tag = f"[{k:>3} devices]"
    r.figure(f"k{k}.encrypt_us", f"{tag} client encrypt per message (Megolm)", enc, "µs", ",.1f")
    r.figure(f"k{k}.olm_equiv_us", f"{tag} pairwise Olm for comparison", olm, "µs", ",.1f")
    r.figure(f"k{k}.key_share_ms", f"{tag} first send incl. key share", share_s * 1e3, "ms",
             ",.1f")
    r.latency(f"k{k}.send", f"{tag} client send to stored", sends)
    r.figure(f"k{k}.messages", f"{tag} relay fan-out", n / secs, "msg/s")
    r.figure(f"k{k}.copies", f"{tag} relay fan-out copies", n * k / secs, "copies/s")


async def group_send_cost(ctx: BenchContext) -> None:
    """Scenario (issue 4): group send cost at 8, 64 and 256 member devices."""
    r = ctx.report
    counts = (8, 64) if ctx.quick else MEMBER_DEVICES
    n_client, n_fanout = (10, 40) if ctx.quick else (50, 300)
    r.note(f"alice (n1) -> k one-device members on 3 LMDB nodes; {TEXT_SIZE}-character texts; "
           f"{n_client} client sends, then {n_fanout} raw group_send with {FANOUT_DEPTH} in flight")
    with ExitStack() as stack:
        async with open_bench_cluster(3, ctx.tmp / "nodes") as cluster, AsyncExitStack() as ac:
            alice = account_on(cluster, ctx.tmp, "alice", "n1", stack)
            client = await ac.enter_async_context(open_client(alice))
            last = _capture(client)
            members: list[State] = []
            for k in counts:
                with trio.fail_after(RUN_TIMEOUT):
                    await _members(ctx, cluster, stack, members, k)
                    name = f"g{k}"
                    await create_group(client, name, [m.user_id for m in members[:k]])
                    t0 = time.perf_counter()
                    await send_group_text(client, name, "first")
                    share_s = time.perf_counter() - t0
                    sends = []
                    for i in range(n_client):
                        t0 = time.perf_counter()
                        result = await send_group_text(client, name, f"{i:04d}" + "x" * (TEXT_SIZE - 4))
                        sends.append(time.perf_counter() - t0)
                        if result.status != "stored":
                            raise RuntimeError(f"group send answered {result.status}")
                    if sum(len(rc.device_ids) for rc in last["recipients"]) != k:
                        raise RuntimeError("the captured group_send does not reach k devices")
                    secs, statuses = await _fanout(client, last, n_fanout, FANOUT_DEPTH)
                    if set(statuses) != {"stored"}:
                        r.note(f"k={k}: statuses {statuses}")
                enc = await trio.to_thread.run_sync(megolm_encrypt_us, 2000)
                olm = await trio.to_thread.run_sync(fanout_encrypt_us, k, max(5, 2000 // k))
                _report(r, k, enc, olm, share_s, sends, secs, n_fanout)
