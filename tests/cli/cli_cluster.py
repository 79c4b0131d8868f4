"""Fixtures for client integration tests: real relay nodes started in-process
(:func:`relay.testing.open_local_cluster`) on 127.0.0.1 with memory storage."""

from __future__ import annotations

from contextlib import ExitStack

from cli.client import init_account, open_client
from cli.state import State, create_state
from relay.testing import LocalCluster, open_local_cluster

__all__ = ["LocalCluster", "new_account", "publish", "run_cluster"]


def run_cluster(n: int = 3, **options):
    """Start ``n`` in-process nodes with ``memory://`` storage; stop them on exit.
    ``options`` are extra ``NodeConfig`` fields (e.g. ``link_ttl``). An async
    context manager giving a :class:`relay.testing.LocalCluster`."""
    return open_local_cluster(n, **options)


def new_account(tmp_path, name: str, relay_url: str, stack: ExitStack) -> State:
    """Create and keep open (locked) a fresh primary device state."""
    state = stack.enter_context(create_state(tmp_path / name, name=name, relay_url=relay_url))
    init_account(state)
    return state


async def publish(state: State) -> str:
    """Publish the device list and keys (one connection); returns the home URL."""
    async with open_client(state, connect_timeout=10) as client:
        return client.url
