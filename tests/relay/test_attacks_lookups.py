"""Lookups an account can repeat at will, against a real node on 127.0.0.1:
``get_devices`` (a directory scraper, or an account that keeps a peer busy) is held
by its own token buckets per account and per source address, and ``claim_keys``
has one claimer limit, the ``claim_keys`` buckets (issue 11). Every refusal
carries its code, the bucket's name and a retry-after."""

from __future__ import annotations

import dataclasses
from contextlib import asynccontextmanager

import trio
from relay_harness import Cluster, UserDevice, connect, make_configs, publish, publish_list

from relay.config.abuse import AbuseLimits
from relay.protocol.frames import AuthOk, Claimed, ClaimKeys, Devices, Error, GetDevices, Ok

LIMITS = AbuseLimits(get_devices_burst=20, get_devices_rate=0.01, claim_keys_burst=10,
                     claim_keys_rate=0.01, address_rate_factor=2, account_create_burst=100)


@asynccontextmanager
async def _session(url: str, device: UserDevice, address: str):
    async with connect(url, local_address=address) as c:
        await c.hello()
        ok = await c.auth(device)
        assert isinstance(ok, AuthOk), ok
        yield c


def _limited(answer, bucket: str) -> None:
    assert isinstance(answer, Error), answer
    assert (answer.code, answer.quota) == ("rate_limited", bucket), answer
    assert answer.retry_after_ms is not None and answer.retry_after_ms > 1000, answer


async def _node(nursery, abuse: AbuseLimits = LIMITS) -> str:
    cluster = Cluster(nursery, make_configs(1, abuse=abuse))
    await cluster.start("n1")
    return cluster.url("n1")


async def test_get_devices_is_rate_limited_per_account_and_per_address(nursery) -> None:
    url = await _node(nursery)
    with trio.fail_after(30):
        target, honest = UserDevice(), UserDevice()
        scrapers = [UserDevice() for _ in range(3)]
        for d in (target, honest, *scrapers):
            await publish(url, d)
        ask = GetDevices(id=0, user_id=target.user_id)
        async with _session(url, scrapers[0], "127.0.0.2") as s:
            for _ in range(20):  # the account's burst
                assert isinstance(await s.request(ask), Devices)
            _limited(await s.request(ask), "get_devices")
        async with _session(url, scrapers[1], "127.0.0.2") as s:
            for _ in range(20):  # a fresh account, same address: 40 = 2 x 20 in all
                assert isinstance(await s.request(ask), Devices)
        async with _session(url, scrapers[2], "127.0.0.2") as s:
            _limited(await s.request(ask), "get_devices")  # its own bucket is full
        async with _session(url, honest, "127.0.0.3") as h:  # elsewhere: unaffected
            assert isinstance(await h.request(ask), Devices)


async def test_claim_keys_has_one_claimer_limit(nursery) -> None:
    # the former per-account claim budget refused at 1,000 devices, without a
    # retry-after; the claim_keys bucket (here 1,100) is the only claimer limit now
    url = await _node(nursery, dataclasses.replace(LIMITS, claim_keys_burst=1100))
    with trio.fail_after(30):
        target, claimer = UserDevice(), UserDevice()
        assert isinstance(await publish_list(url, target.device_list(extra_devices=7)), Ok)
        await publish(url, claimer)
        ask = ClaimKeys(id=0, user_id=target.user_id, device_ids=[0, *range(100, 107)])
        async with _session(url, claimer, "127.0.0.2") as c:
            for _ in range(137):  # 1,096 devices asked for: within the bucket
                answer = await c.request(ask)
                assert isinstance(answer, Claimed), answer
            _limited(await c.request(ask), "claim_keys")


async def test_lookups_of_a_victim_do_not_spend_the_victims_own_budget(nursery) -> None:
    """The ``get_devices`` buckets are the asker's: a crowd of accounts asking for a
    victim's list until each is refused leaves the victim's own lookups (of itself,
    of anyone) untouched."""
    url = await _node(nursery)
    with trio.fail_after(30):
        victim, other = UserDevice(), UserDevice()
        attackers = [UserDevice() for _ in range(4)]
        for d in (victim, other, *attackers):
            await publish(url, d)
        ask = GetDevices(id=0, user_id=victim.user_id)
        for i, attacker in enumerate(attackers):
            async with _session(url, attacker, f"127.0.1.{i + 1}") as s:
                while isinstance(await s.request(ask), Devices):
                    pass
        async with _session(url, victim, "127.0.2.1") as v:
            for i in range(20):  # the victim's whole burst is still there
                whom = victim if i % 2 else other
                answer = await v.request(GetDevices(id=1, user_id=whom.user_id))
                assert isinstance(answer, Devices), (i, answer)
            _limited(await v.request(ask), "get_devices")  # and it is its own
