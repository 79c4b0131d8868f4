"""Attacks by a hostile peer node (valid node keys, a member of the previous ring) on
the handoff of a reshape (docs/protocol.md, "Handoff"): it may only hand over users it
was the old home of, and nothing more once it said ``handoff_complete``."""

from __future__ import annotations

import dataclasses
import hashlib
import math
import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import msgpack
import trio
import vodozemac
from relay_harness import Cluster, UserDevice, peer_session, publish

from relay.config.abuse import AbuseLimits
from relay.config.ring import Ring
from relay.protocol._handoff_frames import encode_records
from relay.protocol.frames import (
    Envelope,
    Error,
    HandoffComplete,
    HandoffMedia,
    HandoffPut,
    Ok,
)
from relay.testing import node_configs, reshape_configs

DEADLINE = 20


def _moving(old: Ring, new: Ring, old_home: str, new_home: str) -> UserDevice:
    """A fresh device whose user moves from ``old_home`` to ``new_home``."""
    while True:
        d = UserDevice()
        if old.home(d.user_id).id == old_home and new.home(d.user_id).id == new_home:
            return d


def _envelope(sender: UserDevice, body: bytes = b"ciphertext") -> bytes:
    """An envelope in stored form (as a queue holds it), from ``sender``'s device 0."""
    from relay.protocol.stored import encode_envelope

    return encode_envelope(Envelope(msg_id=os.urandom(16), sender_user=sender.user_id,
                                    sender_device=0, ts=int(time.time() * 1000), kind="olm",
                                    body=body))


@asynccontextmanager
async def _reshape_to_n3() -> AsyncIterator[tuple[Cluster, UserDevice]]:
    """A 2-node cluster growing to 3; only the new node n3 runs (the test plays n1,
    the old home) and a fresh user moves from n1 to n3."""
    old_configs = node_configs(2)
    async with trio.open_nursery() as nursery:
        cluster = Cluster(nursery, reshape_configs(old_configs, 3))
        await cluster.start("n3")
        yield cluster, _moving(Ring(old_configs[0].cluster), cluster.ring, "n1", "n3")
        nursery.cancel_scope.cancel()


async def test_an_old_home_that_said_complete_cannot_wipe_or_poison_a_user_served_since() -> None:
    """After ``handoff_complete`` the new home serves the old home's users itself (a
    user created during the reshape lives only there). A later ``handoff_put`` from that
    old home (hostile, or a stale retry) must be refused: with ``reset`` it would wipe
    the user's state, without it plant records (dedupe ids suppressing the user's
    future messages, one-time keys, device lists)."""
    with trio.fail_after(DEADLINE):
        async with _reshape_to_n3() as (cluster, victim):
            async with peer_session(cluster, "n1", "n3") as p:
                done = await p.request(HandoffComplete(id=3, ring_version=cluster.ring.version))
                assert isinstance(done, Ok), done
                # the victim's account is created at its new home, served there
                put = await publish(cluster.url("n3"), victim)
                assert not isinstance(put, Error), put
                st = cluster.storages["n3"]
                before = await st.export_user(victim.user_id)
                assert {r.kind for r in before} >= {"list"}, before
                wipe = await p.request(HandoffPut(id=4, user_id=victim.user_id, start=0,
                                                  reset=True, records=encode_records([]),
                                                  outbox=[]))
                poison = await p.request(HandoffPut(
                    id=5, user_id=victim.user_id, start=1, reset=False, outbox=[],
                    records=encode_records([("dedupe", 0, "", 0, 4e9, os.urandom(32))])))
                blob = await p.request(HandoffMedia(id=6, user_id=victim.user_id,
                                                    media_id=hashlib.sha256(b"abc").digest(), size=3,
                                                    offset=0, chunk=b"abc"))
                for answer in (wipe, poison, blob):
                    assert isinstance(answer, Error) and answer.code == "bad_request", answer
                assert await st.export_user(victim.user_id) == before
                assert await st.get_device_list(victim.user_id) is not None


async def test_an_old_home_cannot_plant_state_that_never_expires() -> None:
    """Queued items and dedupe ids expire by their time: one from the future (a hostile
    old home, or a node whose clock runs ahead) is taken as now, and a time that is not
    a number is refused (NaN never compares as old enough)."""
    with trio.fail_after(DEADLINE):
        async with _reshape_to_n3() as (cluster, user):
            st = cluster.storages["n3"]
            async with peer_session(cluster, "n1", "n3") as p:
                before = time.time()
                future = await p.request(HandoffPut(
                    id=3, user_id=user.user_id, start=0, reset=True, outbox=[],
                    records=encode_records([("dedupe", 0, "", 0, 4e9, os.urandom(32)),
                                            ("item", 0, "", 1, 4e9, _envelope(user))])))
                assert isinstance(future, Ok), future
                stamps = [r.ts for r in await st.export_user(user.user_id)
                          if r.kind in ("dedupe", "item")]
                assert len(stamps) == 2 and all(before <= t <= time.time() for t in stamps)
                nan = await p.request(HandoffPut(
                    id=4, user_id=user.user_id, start=2, reset=False, outbox=[],
                    records=encode_records([("dedupe", 0, "", 0, math.nan, os.urandom(32))])))
                assert isinstance(nan, Error) and nan.code == "bad_request", nan
                assert len([r for r in await st.export_user(user.user_id)
                            if r.kind == "dedupe"]) == 1


async def test_an_old_home_cannot_plant_a_device_in_a_handed_over_list() -> None:
    """A handed-over device list is verified as ``put_devices`` would verify it: a
    hostile old home that adds its own device to a user's list (signed with another
    key), or relabels an honest list's version, is refused and nothing is stored; the
    honest list is taken."""
    from relay_harness import list_of

    from relay.protocol.frames import SignedDeviceList
    from relay.protocol.identity import DEVICE_LIST_CONTEXT, DeviceList
    from relay.services.directory import pack_list

    with trio.fail_after(DEADLINE):
        async with _reshape_to_n3() as (cluster, victim):
            evil = UserDevice()  # the attacker's own account key and device
            planted = DeviceList(victim.user_id, 2, (victim.entry(), evil.companion(1).entry()),
                                 int(time.time()))
            body = planted.encode()  # signed with the attacker's key, not the victim's
            forged = SignedDeviceList(body=body, signature=evil.account_key.sign(
                DEVICE_LIST_CONTEXT + body).signature)
            honest = list_of([victim], 1)
            st = cluster.storages["n3"]

            def put(i: int, version: int, signed) -> HandoffPut:
                return HandoffPut(id=i, user_id=victim.user_id, start=0, reset=True, outbox=[],
                                  records=encode_records([("list", 0, "", version, time.time(),
                                                           pack_list(signed))]))

            async with peer_session(cluster, "n1", "n3") as p:
                for i, (version, signed) in enumerate(((2, forged), (5, honest)), start=3):
                    answer = await p.request(put(i, version, signed))
                    assert isinstance(answer, Error) and answer.code == "bad_request", answer
                    assert "device list" in answer.message
                    assert await st.get_device_list(victim.user_id) is None
                assert isinstance(await p.request(put(9, 1, honest)), Ok)
                assert await st.get_device_list(victim.user_id) is not None


async def test_an_old_home_cannot_hand_over_an_envelope_that_breaks_the_device_queue() -> None:
    """Queued envelopes are written into ``deliver`` frames as stored, without being
    decoded again (relay/protocol/stored.py). A handed-over ``item`` that is not an
    envelope (garbage, or a map that swallows the next items of the frame) made every
    ``deliver`` frame of the device's queue undecodable: the device was disconnected on
    each sync and never got the envelopes behind it. Such a batch is refused; honest
    envelopes are taken and delivered."""
    from relay_harness import deliveries, list_of, session

    from relay.protocol.frames import HandoffDone, Sync
    from relay.services.directory import pack_list

    with trio.fail_after(DEADLINE):
        async with _reshape_to_n3() as (cluster, victim):
            now = time.time()
            honest = _envelope(victim)
            listed = ("list", 0, "", 1, now, pack_list(list_of([victim], 1)))
            bad_items = [b"an envelope",  # not msgpack of a map
                         b"\x87" + honest[1:],  # a map header that claims one more entry
                         honest + b"\xc0",  # trailing bytes after the map
                         msgpack.packb({"msg_id": 5, "sender_user": "x", "sender_device": 0,
                                        "ts": 1, "kind": "olm", "body": b"b"})]
            st = cluster.storages["n3"]
            async with peer_session(cluster, "n1", "n3") as p:
                for i, bad in enumerate(bad_items, start=3):
                    answer = await p.request(HandoffPut(
                        id=i, user_id=victim.user_id, start=0, reset=True, outbox=[],
                        records=encode_records([listed, ("item", 0, "", 1, now, bad),
                                                ("item", 0, "", 2, now, honest)])))
                    assert isinstance(answer, Error) and answer.code == "bad_request", answer
                    assert await st.read_queue(victim.user_id, 0) == []
                ok = await p.request(HandoffPut(
                    id=20, user_id=victim.user_id, start=0, reset=True, outbox=[],
                    records=encode_records([listed, ("item", 0, "", 2, now, honest)])))
                assert isinstance(ok, Ok), ok
                assert isinstance(await p.request(HandoffDone(id=21, user_id=victim.user_id)), Ok)
            async with session(cluster.url("n3"), victim) as c:
                await c.send(Sync(id=30))
                (item,) = await deliveries(c, 1)
                assert (item.seq, item.envelope.body) == (2, b"ciphertext")


async def test_an_old_home_cannot_lock_a_device_out_of_uploading_keys() -> None:
    """One-time key ids are vodozemac's counters (``AAAAAAAAAAA``, ``AAAAAAAAAAE``, ...),
    and a claimed id is never accepted again. An old home handing over ``claimed``
    records for the ids a device will use next (and no keys) made every upload of that
    device fail as a whole (``duplicate one-time key id``), its fallback key included:
    the device had no key to claim, so no one could start a session with it. Now only
    the clashing keys are left out; the others and the fallback key are stored."""
    from relay_harness import list_of, session

    from relay.protocol.frames import (
        Claimed,
        ClaimKeys,
        HandoffDone,
        KeyCount,
        OneTimeKey,
        UploadKeys,
    )
    from relay.services.directory import pack_list

    with trio.fail_after(DEADLINE):
        async with _reshape_to_n3() as (cluster, victim):
            now = time.time()
            probe = vodozemac.Account()  # the same counter as the victim's own account
            probe.generate_one_time_keys(5)
            planted = [("claimed", 0, key_id, 0, now, b"") for key_id in probe.one_time_keys]
            async with peer_session(cluster, "n1", "n3") as p:
                put = await p.request(HandoffPut(
                    id=3, user_id=victim.user_id, start=0, reset=True, outbox=[],
                    records=encode_records([("list", 0, "", 1, now,
                                             pack_list(list_of([victim], 1))), *planted])))
                assert isinstance(put, Ok), put
                assert isinstance(await p.request(HandoffDone(id=4, user_id=victim.user_id)), Ok)
            keys = victim.one_time_keys(8)  # the device's first keys: 5 of them clash
            victim.olm.generate_fallback_key()
            ((fb_id, fb_key),) = victim.olm.fallback_key.items()
            fallback = OneTimeKey(fb_id, fb_key.to_bytes())
            async with session(cluster.url("n3"), victim) as c:
                answer = await c.request(UploadKeys(id=10, one_time_keys=keys,
                                                    fallback_key=fallback))
                assert isinstance(answer, KeyCount) and answer.otk_count == 3, answer
                claimed = await c.request(ClaimKeys(id=11, user_id=victim.user_id,
                                                    device_ids=[0]))
            assert isinstance(claimed, Claimed) and len(claimed.keys) == 1, claimed
            assert claimed.keys[0].key_id not in probe.one_time_keys
            assert not claimed.keys[0].fallback
            assert await cluster.storages["n3"].get_fallback_key(victim.user_id, 0) == (
                fb_id, fb_key.to_bytes())


async def test_an_old_home_cannot_plant_more_watchers_than_the_bound() -> None:
    """attack9: the new home kept every watcher record a handoff carried, so an old home
    (hostile, or with a larger bound) could give a user any number of watchers, each
    notified of every list change for ``watcher_ttl``: ``watchers_per_user`` was not
    applied to imports. Now at most that many are kept: the first batch's most recently
    refreshed, then none while the user holds the bound."""
    old_configs = node_configs(2)
    bound = AbuseLimits(watchers_per_user=4)
    configs = [dataclasses.replace(c, abuse=bound) for c in reshape_configs(old_configs, 3)]
    with trio.fail_after(DEADLINE):
        async with trio.open_nursery() as nursery:
            cluster = Cluster(nursery, configs)
            await cluster.start("n3")
            user = _moving(Ring(old_configs[0].cluster), cluster.ring, "n1", "n3")
            crowd = sorted(UserDevice().user_id for _ in range(10))
            now = time.time()
            async with peer_session(cluster, "n1", "n3") as p:
                first = await p.request(HandoffPut(
                    id=3, user_id=user.user_id, start=0, reset=True, outbox=[],
                    records=encode_records([("watcher", 0, w, 0, now - 100 + i, b"")
                                            for i, w in enumerate(crowd[:6])])))
                assert isinstance(first, Ok), first
                second = await p.request(HandoffPut(
                    id=4, user_id=user.user_id, start=6, reset=False, outbox=[],
                    records=encode_records([("watcher", 0, w, 0, now - 50 + i, b"")
                                            for i, w in enumerate(crowd[6:])])))
                assert isinstance(second, Ok), second
            assert await cluster.storages["n3"].watchers(user.user_id) == sorted(crowd[2:6])
            nursery.cancel_scope.cancel()
