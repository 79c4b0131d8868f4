"""Fixtures for client integration tests: real relay nodes started in-process
(:func:`relay.testing.open_local_cluster`) on 127.0.0.1 with memory storage."""

from __future__ import annotations

from contextlib import ExitStack

from cli.client import BacklogDone, DevicesChanged, init_account, open_client
from cli.session import crypto
from cli.session.state import State, create_state
from relay.testing import LocalCluster, open_local_cluster

__all__ = [
    "LocalCluster", "alice_and_bob", "drain", "link_second_device", "make_account",
    "new_account", "publish", "quiet",
    "run_cluster",
]


def run_cluster(n: int = 3, **options):
    """Start ``n`` in-process nodes with ``memory://`` storage; stop them on exit.
    ``options`` are extra ``NodeConfig`` fields (e.g. ``link_ttl``). An async
    context manager giving a :class:`relay.testing.LocalCluster`."""
    return open_local_cluster(n, **options)


def quiet(state: State) -> State:
    """Turn off delivery/read receipts and message requests on ``state`` (both on by
    default): for the library-level tests of transport, trust, groups and devices,
    whose strangers write to each other and which count the messages they get. The
    features themselves are tested with their defaults (test_cli_basics,
    test_cli_kinds, test_cli_daemon*, and the wa-cli process tests)."""
    state.prefs.receipts = False
    state.prefs.hold_requests = False
    return state


def new_account(tmp_path, name: str, relay_url: str, stack: ExitStack) -> State:
    """Create and keep open (locked) a fresh primary device state (:func:`quiet`)."""
    state = stack.enter_context(create_state(tmp_path / name, name=name, relay_url=relay_url))
    init_account(state)
    return quiet(state)


async def publish(state: State) -> str:
    """Publish the device list and keys (one connection); returns the home URL."""
    async with open_client(state, connect_timeout=10) as client:
        return client.url


def make_account(tmp_path, name, cluster, stack, not_on=(), accept=None):
    """A fresh account whose home is not in ``not_on`` (and whose user id passes
    ``accept(user_id)``, if given); its relay URL is another node, so that connecting
    exercises ``moved``."""
    for i in range(200):
        state = new_account(tmp_path, f"{name}-{i}", "ws://unset", stack)
        state.name = name
        home = cluster.home_of(state.user_id)
        if home in not_on or (accept is not None and not accept(state.user_id)):
            continue
        state.relay_url = next((url for nid, url in cluster.urls.items() if nid != home),
                               cluster.urls[home])
        state.save()
        return state
    raise AssertionError("no account landed on a fitting node")


async def alice_and_bob(tmp_path, cluster, stack, *, apart: bool = False) -> tuple[State, State]:
    """Accounts ``alice`` and ``bob`` (:func:`make_account`), both published; with
    ``apart``, bob's home is not alice's."""
    alice = make_account(tmp_path, "alice", cluster, stack)
    bob = make_account(tmp_path, "bob", cluster, stack,
                       not_on=[cluster.home_of(alice.user_id)] if apart else ())
    await publish(alice)
    await publish(bob)
    return alice, bob


async def drain(client) -> list:
    """Events until the backlog marker (device-list change notices left out)."""
    out = []
    async for event in client.receive():
        if isinstance(event, BacklogDone):
            return out
        if not isinstance(event, DevicesChanged):
            out.append(event)
    raise AssertionError("receive ended before the backlog marker")


async def link_second_device(tmp_path, stack, state):
    """Give ``state``'s account a device 1 (list version + 1), published and connected."""
    new = stack.enter_context(create_state(tmp_path / f"{state.name}-second-device", name=state.name,
                                           relay_url=state.relay_url))
    quiet(new)
    new.account_key, new.user_id, new.device_id = None, state.user_id, 1
    own = state.own_list()
    entries = [crypto.DeviceEntry(d.device_id, d.ed25519, d.curve25519, d.name, d.added_at)
               for d in own.devices]
    entries.append(crypto.DeviceEntry(1, new.identity.ed25519, new.identity.curve25519,
                                      "new", 2))
    _, signed = crypto.make_device_list(state.account_key, own.version + 1, entries)
    state.remember_device_list(signed, state.user_id)
    new.remember_device_list(signed, state.user_id)
    new.identity.generate_one_time_keys(crypto.ONE_TIME_KEYS_TARGET)
    new.identity.generate_fallback_key()
    async with open_client(state) as client:
        await client.publish_device_list()
    await publish(new)
    return new
