"""Every token bucket of docs/operations.md, "Abuse limits", mounted on a real node on
127.0.0.1: over it the request is refused ``rate_limited`` naming the bucket, with a
retry-after, and nothing is stored (issue 11, "every refusal carries its code and
retry-after"). ``send``, ``upload_keys``: test_abuse.py; ``get_devices``,
``claim_keys``: test_attacks_lookups.py; ``peer_forward``: test_abuse_outbox_media.py."""

from __future__ import annotations

import hashlib
import os

import trio
from relay_harness import Cluster, UserDevice, connect, make_configs, publish, session

from relay.config.abuse import AbuseLimits
from relay.protocol.frames import (
    Error,
    LinkOpen,
    LinkOpened,
    MediaProgress,
    MediaUpload,
    Ok,
    PutDevices,
    Send,
    Sent,
)

LIMITS = AbuseLimits(send_bytes_burst=1000, send_bytes_rate=10, put_devices_burst=2,
                     put_devices_rate=0.01, link_open_burst=2, link_open_rate=0.01,
                     media_upload_burst=1000, media_upload_rate=10, account_create_burst=2,
                     account_create_rate=0.01, address_rate_factor=10)


def _limited(answer, bucket: str) -> None:
    assert isinstance(answer, Error), answer
    assert (answer.code, answer.quota) == ("rate_limited", bucket), answer
    assert answer.retry_after_ms is not None and answer.retry_after_ms > 1000, answer


async def test_every_other_bucket_refuses_with_its_name_and_a_retry_after(nursery) -> None:
    cluster = Cluster(nursery, make_configs(1, abuse=LIMITS))
    await cluster.start("n1")
    url, store = cluster.url("n1"), cluster.storages["n1"]
    with trio.fail_after(30):
        alice, bob = UserDevice(), UserDevice()
        assert await publish(url, alice) == Ok(id=2)
        assert await publish(url, bob) == Ok(id=2)
        # account_create, per address: the third account from 127.0.0.1 is one too many
        late = UserDevice()
        answer = await publish(url, late)
        _limited(answer, "account_create")
        assert await store.get_device_list(late.user_id) is None
        async with connect(url, local_address="127.0.0.2") as c:  # another address may
            await c.hello()
            assert await c.request(PutDevices(id=0, device_list=late.device_list())) == Ok(id=0)
        # put_devices, per account: the first list and one more version, then refused
        async with connect(url) as c:
            await c.hello()
            ok = await c.request(PutDevices(id=0, device_list=alice.device_list(2)))
            assert ok == Ok(id=0), ok
            _limited(await c.request(PutDevices(id=0, device_list=alice.device_list(3))),
                     "put_devices")
        assert (await store.get_device_list(alice.user_id))[0] == 2
        async with session(url, alice) as a:
            # send_bytes: fan-out bytes per account (600 + 600 > 1000)
            sent = await a.request(Send(id=0, msg_id=os.urandom(16),
                                        recipients=[bob.recipient(b"x" * 600)]))
            assert isinstance(sent, Sent), sent
            before = await store.queue_length(bob.user_id, 0)
            _limited(await a.request(Send(id=0, msg_id=os.urandom(16),
                                          recipients=[bob.recipient(b"y" * 600)])), "send_bytes")
            assert await store.queue_length(bob.user_id, 0) == before
            # media_upload: bytes per account
            blob = os.urandom(800)
            done = await a.request(MediaUpload(id=0, media_id=hashlib.sha256(blob).digest(),
                                               size=len(blob), offset=0, chunk=blob))
            assert isinstance(done, MediaProgress) and done.complete, done
            other = os.urandom(800)
            _limited(await a.request(MediaUpload(id=0, media_id=hashlib.sha256(other).digest(),
                                                 size=len(other), offset=0, chunk=other)),
                     "media_upload")
            assert await store.media_status(hashlib.sha256(other).digest()) is None
        # link_open, per address
        async with connect(url, local_address="127.0.0.3") as c:
            await c.hello()
            for _ in range(2):
                assert isinstance(await c.request(LinkOpen(id=0, device_info=b"new")),
                                  LinkOpened)
            _limited(await c.request(LinkOpen(id=0, device_info=b"new")), "link_open")
