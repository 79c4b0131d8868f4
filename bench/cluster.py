"""An in-process local cluster for benchmarks: ``n`` relay nodes on 127.0.0.1
(:func:`relay.testing.open_local_cluster`), each with durable LMDB storage
(``lmdb:///<dir>/nK``), plus helpers that create accounts homed on a chosen node.

LMDB, not memory, because durability is what we measure. Every client of a
benchmark connects from 127.0.0.1 and sends as fast as it can, so the nodes' rate
limits are raised (:data:`BENCH_ABUSE`); the checks still run.
"""

from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path

from cli.client import init_account, open_client
from cli.session.state import State, create_state
from relay.config.abuse import AbuseLimits
from relay.testing import LocalCluster, open_local_cluster

BENCH_ABUSE = AbuseLimits(
    send_rate=1e9, send_burst=1e9, send_bytes_rate=1e12, send_bytes_burst=1e12,
    claim_keys_rate=1e9, claim_keys_burst=1e9, upload_keys_rate=1e9, upload_keys_burst=1e9,
    put_devices_rate=1e9, put_devices_burst=1e9, account_create_rate=1e9,
    account_create_burst=1e9, peer_forward_rate=1e9, peer_forward_burst=1e9,
    media_upload_rate=1e12, media_upload_burst=1e12)
"""The abuse limits of benchmark nodes: quotas as by default, rates out of the way."""

BenchCluster = LocalCluster
"""Running nodes: ``urls[node_id]``, ``ring``; ``home_of(user_id)`` is a node id."""


def open_bench_cluster(n: int, data_dir: Path):
    """Start ``n`` nodes ``n1..nN`` with LMDB storage under ``data_dir/nK``; stop them
    on exit. An async context manager giving a :class:`BenchCluster`.

    Raises:
        OSError: a port could not be bound; StorageError: LMDB could not open.
    """
    return open_local_cluster(n, storage="lmdb", data_dir=data_dir, abuse=BENCH_ABUSE)


def new_account(home: Path, name: str, relay_url: str, stack: ExitStack) -> State:
    """Create a fresh account (primary device 0) in ``home`` and keep its state open
    (locked) until ``stack`` closes. Published by the first :func:`open_client`."""
    state = stack.enter_context(create_state(home, name=name, relay_url=relay_url))
    init_account(state)
    # the benchmarks measure the message path: no receipts back (on by default) and
    # no message requests between the benchmark's strangers
    state.prefs.receipts = state.prefs.hold_requests = False
    return state


def account_on(
    cluster: BenchCluster, root: Path, name: str, home_node: str, stack: ExitStack,
    max_tries: int = 64,
) -> State:
    """A fresh account whose home is ``home_node`` (re-rolls the account key until
    the ring puts it there; about ``n`` tries for an ``n``-node cluster).

    Raises:
        RuntimeError: no such account after ``max_tries`` keys.
    """
    relay_url = cluster.urls[home_node]
    for i in range(max_tries):
        with ExitStack() as probe:
            state = new_account(root / f"{name}-{i}", name, relay_url, probe)
            if cluster.home_of(state.user_id) == home_node:
                stack.enter_context(probe.pop_all())  # keep it open (and locked)
                return state
    raise RuntimeError(f"no account homed on {home_node} after {max_tries} keys")


async def publish(state: State) -> None:
    """Publish the device list and one-time keys of ``state`` (one short connection)."""
    async with open_client(state, connect_timeout=10):
        pass
