"""An in-process local cluster for benchmarks: ``n`` relay nodes started with
:func:`relay.node.serve_node` on 127.0.0.1, each with durable LMDB storage
(``lmdb:///<dir>/nK``), plus helpers that create accounts homed on a chosen node.

Same approach as ``tests/cli/cli_cluster.py`` (bind-then-release free ports, one
cancel scope per node), but on LMDB, because durability is what we measure.
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from contextlib import ExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import nacl.signing
import trio

from cli.client import init_account, open_client
from cli.state import State, create_state
from relay.config import NodeConfig
from relay.node import serve_node
from relay.ring import NodeInfo, Ring


def free_ports(n: int) -> list[int]:
    """``n`` loopback ports the kernel just handed out (bound, then released: the
    cluster file needs the URLs before the nodes listen)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


@dataclass
class BenchCluster:
    """Running nodes: ``urls[node_id]``, ``ring``; ``home_of(user_id)`` is a node id."""

    urls: dict[str, str]
    ring: Ring

    def home_of(self, user_id: str) -> str:
        """The id of ``user_id``'s home node (rendezvous hashing over the cluster)."""
        return self.ring.home(user_id).id


@asynccontextmanager
async def open_bench_cluster(n: int, data_dir: Path) -> AsyncIterator[BenchCluster]:
    """Start ``n`` nodes ``n1..nN`` with LMDB storage under ``data_dir/nK``; stop them on exit.

    Raises:
        OSError: a port could not be bound; StorageError: LMDB could not open.
    """
    ports = free_ports(n)
    keys = [nacl.signing.SigningKey.generate() for _ in range(n)]
    infos = tuple(NodeInfo(f"n{i + 1}", f"ws://127.0.0.1:{p}", bytes(k.verify_key))
                  for i, (p, k) in enumerate(zip(ports, keys, strict=True)))
    async with trio.open_nursery() as nursery:
        for info, port, key in zip(infos, ports, keys, strict=True):
            node_dir = data_dir / info.id
            node_dir.mkdir(parents=True, exist_ok=True)
            config = NodeConfig(id=info.id, host="127.0.0.1", port=port, cluster=infos,
                                signing_key=key, storage=f"lmdb://{node_dir.absolute()}")
            await nursery.start(serve_node, config)
        try:
            yield BenchCluster({i.id: i.url for i in infos}, Ring(infos))
        finally:
            nursery.cancel_scope.cancel()


def new_account(home: Path, name: str, relay_url: str, stack: ExitStack) -> State:
    """Create a fresh account (primary device 0) in ``home`` and keep its state open
    (locked) until ``stack`` closes. Published by the first :func:`open_client`."""
    state = stack.enter_context(create_state(home, name=name, relay_url=relay_url))
    init_account(state)
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
