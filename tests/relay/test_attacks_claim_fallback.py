"""Draining a device's one-time-key budget must leave its fallback key to claimers.

The fallback key handed out past the budget came only from an in-memory cache filled
at ``upload_keys``: after a restart (or a reshape, or at another process of a
multi-process home) the cache was empty, and a device with 30+ one-time keys left
gave *no key at all* to every claimer once anyone claimed 30 of them. The node now
reads the fallback key from storage (``Storage.get_fallback_key``) when its cache has
none."""

from __future__ import annotations

import trio
from relay_harness import Cluster, UserDevice, make_configs, publish, session

from relay.protocol.frames import ClaimKeys, KeyCount, OneTimeKey, UploadKeys


async def test_a_drained_device_still_hands_out_its_fallback_key_after_a_restart(
        nursery) -> None:
    cluster = Cluster(nursery, make_configs(1))
    await cluster.start("n1")
    url = cluster.url("n1")
    with trio.fail_after(30):
        victim, mallory, honest = UserDevice(), UserDevice(), UserDevice()
        for d in (victim, mallory, honest):
            await publish(url, d)
        async with session(url, victim) as v:
            answer = await v.request(UploadKeys(id=3, one_time_keys=victim.one_time_keys(50),
                                                fallback_key=OneTimeKey("fb", b"f" * 32)))
            assert isinstance(answer, KeyCount) and answer.otk_count == 50
        cluster.stop("n1")
        await cluster.start("n1")
        async with session(url, mallory) as m:
            for _ in range(30):
                await m.request(ClaimKeys(id=0, user_id=victim.user_id, device_ids=[0]))
        async with session(url, honest) as h:
            answer = await h.request(ClaimKeys(id=0, user_id=victim.user_id, device_ids=[0]))
        assert answer.keys, f"an honest claimer got no key of the device: {answer}"
