"""Fixtures for client integration tests: real relay nodes started in-process
(``relay.node.serve_node`` via ``nursery.start``) on 127.0.0.1 with memory storage."""

from __future__ import annotations

import socket
from contextlib import ExitStack, asynccontextmanager
from dataclasses import dataclass

import nacl.signing
import pytest
import trio

from cli.client import init_account, open_client
from cli.state import State, create_state


def _free_ports(n: int) -> list[int]:
    """Ports the kernel just handed out (bound then released; the cluster file needs
    them before the nodes listen)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


@dataclass
class LocalCluster:
    """N running nodes. ``urls[node_id]``; ``home_of(user_id)`` by the ring;
    ``scopes[node_id]`` cancels that node."""

    urls: dict[str, str]
    ring: object
    scopes: dict[str, trio.CancelScope]

    def home_of(self, user_id: str) -> str:
        return self.ring.home(user_id).id

    def stop(self, node_id: str) -> None:
        self.scopes[node_id].cancel()


@asynccontextmanager
async def run_cluster(n: int = 3, **options):
    """Start ``n`` in-process nodes with ``memory://`` storage; stop them on exit.
    ``options`` are extra ``NodeConfig`` fields (e.g. ``link_ttl``)."""
    relay_node = pytest.importorskip("relay.node")
    from relay.config import NodeConfig
    from relay.ring import NodeInfo, Ring

    ports = _free_ports(n)
    keys = [nacl.signing.SigningKey.generate() for _ in range(n)]
    infos = tuple(NodeInfo(f"n{i + 1}", f"ws://127.0.0.1:{p}", bytes(k.verify_key))
                  for i, (p, k) in enumerate(zip(ports, keys, strict=True)))
    async with trio.open_nursery() as nursery:
        scopes = {}
        for info, port, key in zip(infos, ports, keys, strict=True):
            config = NodeConfig(id=info.id, host="127.0.0.1", port=port, cluster=infos,
                                signing_key=key, storage="memory://", **options)

            async def one(config=config, task_status=trio.TASK_STATUS_IGNORED):
                with trio.CancelScope() as scope:
                    scopes[config.id] = scope
                    await relay_node.serve_node(config, task_status=task_status)

            await nursery.start(one)
        try:
            yield LocalCluster({i.id: i.url for i in infos}, Ring(infos), scopes)
        finally:
            nursery.cancel_scope.cancel()


def new_account(tmp_path, name: str, relay_url: str, stack: ExitStack) -> State:
    """Create and keep open (locked) a fresh primary device state."""
    state = stack.enter_context(create_state(tmp_path / name, name=name, relay_url=relay_url))
    init_account(state)
    return state


async def publish(state: State) -> str:
    """Publish the device list and keys (one connection); returns the home URL."""
    async with open_client(state, connect_timeout=10) as client:
        return client.url
