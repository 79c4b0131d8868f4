"""Device-list watchers on a node served by two processes over one PostgreSQL schema
(attack9; two ``serve_node`` in one Trio run, each with its own storage, as two
processes would have). Each process skips writing a pair it wrote less than a day ago
(an in-memory cache); a swarm evicting an honest watcher through process B left that
cache at A saying "stored", so the honest watcher's later fetches through A did not
record it again for up to a day: it missed every list change meanwhile, while the
bound promised it is back in at its next fetch."""

from __future__ import annotations

import dataclasses
import hashlib
from functools import partial

import pytest
import trio
from relay_harness import UserDevice, deliveries, list_of, publish, publish_list, session

from relay.config.abuse import AbuseLimits
from relay.config.ring import NodeInfo
from relay.node import serve_node
from relay.protocol.frames import Devices, GetDevices, Ok, Sync
from relay.testing import free_ports, node_configs
from storage.postgresql import PostgresStorage

DEADLINE = 30


async def _fetch(url: str, asker: UserDevice, user: UserDevice) -> None:
    async with session(url, asker) as s:
        assert isinstance(await s.request(GetDevices(id=5, user_id=user.user_id)), Devices)


async def test_a_watcher_evicted_through_another_process_is_back_at_its_next_fetch(
        postgres_db: str, request: pytest.FixtureRequest) -> None:
    schema = "s_" + hashlib.sha256(request.node.nodeid.encode()).hexdigest()[:12]
    [base] = node_configs(1)
    ports = free_ports(2)
    urls = tuple(f"ws://127.0.0.1:{p}" for p in ports)
    info = NodeInfo(base.id, urls[0], bytes(base.signing_key.verify_key), urls)
    storage = f"{postgres_db}&schema={schema}&notify=true"
    abuse = AbuseLimits(watchers_per_user=2, get_devices_burst=1000, put_devices_burst=1000,
                        account_create_burst=1000)
    configs = [dataclasses.replace(base, port=p, cluster=(info,), storage=storage,
                                   abuse=abuse) for p in ports]
    a, b = urls
    with trio.fail_after(DEADLINE):
        async with trio.open_nursery() as nursery:
            for cfg in configs:
                await nursery.start(partial(serve_node, cfg))
            victim, honest = UserDevice(), UserDevice()
            swarm = [UserDevice() for _ in range(2)]
            for d in [victim, honest, *swarm]:
                assert await publish(a, d) == Ok(id=2)
            async with PostgresStorage.from_url(storage) as store:
                await _fetch(a, honest, victim)
                assert await store.watchers(victim.user_id) == [honest.user_id]
                for s in swarm:  # through the other process: the honest watcher is dropped
                    await _fetch(b, s, victim)
                assert honest.user_id not in await store.watchers(victim.user_id)
                await _fetch(a, honest, victim)  # its next fetch, through A again
                assert honest.user_id in await store.watchers(victim.user_id)
                # a repeated fetch keeps the pair as it is
                before = await store.watchers(victim.user_id)
                await _fetch(a, honest, victim)
                assert await store.watchers(victim.user_id) == before
                # and the honest watcher is told of the next change
                async with session(a, honest) as h:
                    await h.send(Sync(id=2))
                    v2 = list_of([victim, victim.companion(1)], 2)
                    assert await publish_list(b, v2) == Ok(id=2)
                    (notice,) = await deliveries(h, 1)
                    assert (notice.envelope.kind, notice.envelope.sender_user) == (
                        "device_list", victim.user_id)
            nursery.cancel_scope.cancel()
