"""Device-list watchers are bounded (issue 11) against real nodes on 127.0.0.1: one
account watching every user, a swarm of fresh accounts watching one user, and expiry.
The bounds hold (``watching_per_account``, ``watchers_per_user``, ``watcher_ttl``),
one list change fans out to at most ``watchers_per_user`` watchers, honest watchers
still get their notices, and a watcher that is not (or no longer) recorded still
learns a changed list through ``stale_devices``."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from functools import partial
from pathlib import Path

import pytest
import trio
from relay_harness import (
    Cluster,
    UserDevice,
    deliveries,
    device_homed_at,
    list_of,
    make_configs,
    publish,
    publish_list,
    session,
)

from relay.config.abuse import AbuseLimits
from relay.node import Node
from relay.protocol import verify_device_list
from relay.protocol.frames import Devices, Error, GetDevices, Ok, Send, Sync
from relay.services.notices import notice_msg_id
from storage.lmdb import LmdbStorage

BACKENDS = pytest.mark.parametrize("backend", ["memory", "lmdb"])
BOUNDS = AbuseLimits(watchers_per_user=4, watching_per_account=5, get_devices_burst=1000,
                     put_devices_burst=1000, account_create_burst=10_000)


@asynccontextmanager
async def _cluster(tmp_path: Path, backend: str, n: int,
                   abuse: AbuseLimits = BOUNDS) -> AsyncIterator[tuple[Cluster, dict]]:
    """``n`` nodes on memory storage, or on LMDB stores this test opens (so that it can
    read them while the nodes run)."""
    async with AsyncExitStack() as stack:
        stores = {}
        if backend == "lmdb":
            for i in range(1, n + 1):
                stores[f"n{i}"] = await stack.enter_async_context(
                    LmdbStorage.open(tmp_path / f"n{i}"))
        async with trio.open_nursery() as nursery:  # ends before the stores close
            cluster = Cluster(nursery, make_configs(n, abuse=abuse))
            cluster.storages.update(stores)
            nodes: dict[str, Node] = {}
            for config in cluster.configs:
                await cluster.start(config.id, on_node=partial(nodes.__setitem__, config.id))
            yield cluster, nodes
            for config in cluster.configs:
                cluster.stop(config.id)


def _dropped(node: Node, reason: str) -> float:
    value = node.metrics.registry.get_sample_value("wa_relay_watchers_dropped_total",
                                                    {"reason": reason})
    return value or 0.0


async def _fetch(url: str, asker: UserDevice, users: list[UserDevice]) -> None:
    async with session(url, asker) as s:
        for i, u in enumerate(users):
            assert isinstance(await s.request(GetDevices(id=10 + i, user_id=u.user_id)), Devices)


async def _stale_send(url: str, sender: UserDevice, to: UserDevice, new_version: int) -> None:
    """A send to ``to``'s old list is refused ``stale_devices`` with the new list."""
    async with session(url, sender) as s:
        err = await s.request(Send(id=3, msg_id=os.urandom(16), recipients=[to.recipient()]))
    assert isinstance(err, Error) and err.code == "stale_devices", err
    assert err.device_list is not None and err.user_id == to.user_id
    assert verify_device_list(err.device_list, to.user_id).version == new_version


@BACKENDS
async def test_one_account_watching_many_users_is_bound(tmp_path, backend) -> None:
    async with _cluster(tmp_path, backend, 2) as (cluster, nodes):
        await _one_account(cluster, nodes)


async def _one_account(cluster: Cluster, nodes: dict) -> None:
    store = cluster.storages["n2"]
    with trio.fail_after(30):
        victims = [device_homed_at(cluster.ring, "n2") for _ in range(8)]
        scraper = device_homed_at(cluster.ring, "n1")
        honest = device_homed_at(cluster.ring, "n1")
        for d in [*victims, scraper, honest]:
            assert await publish(cluster.url(cluster.home_of(d.user_id)), d) == Ok(id=2)
        # the scraper asks its own node, which forwards each get_devices to n2 naming it
        await _fetch(cluster.url("n1"), scraper, victims)
        assert await store.watching_count(scraper.user_id) == 5
        watched = [v for v in victims if scraper.user_id in await store.watchers(v.user_id)]
        assert watched == victims[:5]
        assert _dropped(nodes["n2"], "refused") == 3
        # an honest contact of a victim the scraper could not add is recorded and notified
        last = victims[-1]
        await _fetch(cluster.url("n1"), honest, [last])
        assert await store.watchers(last.user_id) == [honest.user_id]
        async with session(cluster.url("n1"), honest) as h:
            await h.send(Sync(id=2))
            new_list = list_of([last, last.companion(1)], 2)
            assert await publish_list(cluster.url("n2"), new_list) == Ok(id=2)
            (notice,) = await deliveries(h, 1)
            assert (notice.envelope.kind, notice.envelope.sender_user) == (
                "device_list", last.user_id)
        assert await cluster.storages["n1"].queue_length(scraper.user_id, 0) == 0
        # the scraper, not recorded, still learns the new list when it writes
        await _stale_send(cluster.url("n1"), scraper, last, 2)


@BACKENDS
async def test_a_swarm_watching_one_user_is_bound_and_honest_watchers_get_notices(
        tmp_path, backend) -> None:
    async with _cluster(tmp_path, backend, 2) as (cluster, nodes):
        await _swarm(cluster, nodes)


async def _swarm(cluster: Cluster, nodes: dict) -> None:
    store = cluster.storages["n1"]
    with trio.fail_after(30):
        victim = device_homed_at(cluster.ring, "n1")
        honest = device_homed_at(cluster.ring, "n2")
        swarm = [UserDevice() for _ in range(10)]
        for d in [victim, honest, *swarm]:
            assert await publish(cluster.url(cluster.home_of(d.user_id)), d) == Ok(id=2)
        await _fetch(cluster.url("n2"), honest, [victim])
        for s in swarm:  # each fresh account asks once, at its own home
            await _fetch(cluster.url(cluster.home_of(s.user_id)), s, [victim])
        have = await store.watchers(victim.user_id)
        assert len(have) == 4 and honest.user_id not in have
        assert set(have) == {s.user_id for s in swarm[-4:]}  # the most recently refreshed
        assert _dropped(nodes["n1"], "evicted") == 7
        # the honest watcher was dropped: its next send learns the new list, and
        # records it again (dropping the swarm's least recently refreshed)
        v2 = list_of([victim, victim.companion(1)], 2)
        assert await publish_list(cluster.url("n1"), v2) == Ok(id=2)
        await _stale_send(cluster.url("n2"), honest, victim, 2)
        have = await store.watchers(victim.user_id)
        assert len(have) == 4 and honest.user_id in have
        assert _dropped(nodes["n1"], "evicted") == 8
        # the next change reaches the honest watcher (it missed v2's notice: not recorded then)
        v3 = list_of([victim, victim.companion(1), victim.companion(2)], 3)
        async with session(cluster.url("n2"), honest) as h:
            await h.send(Sync(id=2))
            assert await publish_list(cluster.url("n1"), v3) == Ok(id=2)
            (notice,) = await deliveries(h, 1)
            assert notice.envelope.msg_id == notice_msg_id(victim.user_id, 3)


@BACKENDS
async def test_swarm_notices_fan_out_to_the_bound_only(tmp_path, backend) -> None:
    async with _cluster(tmp_path, backend, 1) as (cluster, nodes):
        await _fan_out(cluster)


async def _fan_out(cluster: Cluster) -> None:
    store = cluster.storages["n1"]
    url = cluster.url("n1")
    with trio.fail_after(30):
        victim, honest = UserDevice(), UserDevice()
        swarm = [UserDevice() for _ in range(12)]
        for d in [victim, honest, *swarm]:
            assert await publish(url, d) == Ok(id=2)
        for s in swarm:
            await _fetch(url, s, [victim])
        await _fetch(url, honest, [victim])  # the most recent fetch: kept
        assert len(await store.watchers(victim.user_id)) == 4
        times = {r.key: r.ts for r in await store.export_user(victim.user_id, limit=100)
                 if r.kind == "watcher"}
        await _fetch(url, honest, [victim])  # within a day: not written again
        assert {r.key: r.ts for r in await store.export_user(victim.user_id, limit=100)
                if r.kind == "watcher"} == times
        assert times[honest.user_id] == max(times.values())
        assert await publish_list(url, list_of([victim, victim.companion(1)], 2)) == Ok(id=2)
        notified = [s for s in swarm if await store.queue_length(s.user_id, 0)]
        assert notified == swarm[-3:]  # 3 of the swarm and the honest watcher: 4 notices
        async with session(url, honest) as h:
            await h.send(Sync(id=2))
            (notice,) = await deliveries(h, 1)
            assert (notice.envelope.kind, notice.envelope.sender_user) == (
                "device_list", victim.user_id)


@BACKENDS
async def test_watchers_not_refreshed_within_the_ttl_expire(tmp_path, backend) -> None:
    abuse = dataclasses.replace(BOUNDS, watcher_ttl=0.001)
    async with _cluster(tmp_path, backend, 1, abuse) as (cluster, nodes):
        await _expiry(cluster, nodes)


async def _expiry(cluster: Cluster, nodes: dict) -> None:
    store, url = cluster.storages["n1"], cluster.url("n1")
    with trio.fail_after(30):
        victim, contact = UserDevice(), UserDevice()
        for d in (victim, contact):
            assert await publish(url, d) == Ok(id=2)
        await _fetch(url, contact, [victim])
        assert await store.watchers(victim.user_id) == [contact.user_id]
        gone = 0
        while not gone:  # the pair is older than the 1 ms TTL after a round trip or two
            gone = await nodes["n1"].changes.expire_watchers()
        assert gone == 1 and await store.watchers(victim.user_id) == []
        assert _dropped(nodes["n1"], "expired") == 1
        # the contact learns the next list when it writes, and is a watcher again
        assert await publish_list(url, list_of([victim, victim.companion(1)], 2)) == Ok(id=2)
        await _stale_send(url, contact, victim, 2)
        assert await store.watchers(victim.user_id) == [contact.user_id]
