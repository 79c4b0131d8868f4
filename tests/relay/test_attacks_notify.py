"""Attacks by a hostile peer node through ``notify`` (device-list notices): a notice is
queued in every device queue of every named user, so it must be bounded like the
forwards of that peer (issue 11: a peer is bounded as a whole)."""

from __future__ import annotations

import os
import time

import msgpack
import trio
from relay_harness import Cluster, device_homed_at, make_configs, peer_session, publish

from relay.config.abuse import AbuseLimits
from relay.protocol.frames import BounceBack, Envelope, ForwardBatch, Notify, SignedDeviceList
from relay.protocol.identity import DEVICE_LIST_CONTEXT
from relay.services.notices import NOTICE_KIND, notice_msg_id

QUEUE = 256 * 1024


def _fat_list(device, version: int, size: int) -> SignedDeviceList:
    pad_map = {f"k{i}": "x" * 250 for i in range(15)}
    pads, left = {}, size
    while left > 0:
        n = min(64, max(1, left // (15 * 256)))
        pads[f"pad{len(pads)}"] = [pad_map] * n
        left -= n * 15 * 256
    entry = device.entry()
    body = msgpack.packb({"user_id": device.user_id, "version": version,
                          "issued_at": int(time.time()),
                          "devices": [{"device_id": entry.device_id, "ed25519": entry.ed25519,
                                       "curve25519": entry.curve25519, "name": entry.name,
                                       "added_at": entry.added_at}], **pads}, use_bin_type=True)
    sig = device.account_key.sign(DEVICE_LIST_CONTEXT + body).signature
    return SignedDeviceList(body=body, signature=sig)


def _notice(sender, version: int, users: list[str]) -> Notify:
    signed = _fat_list(sender, version, 48 * 1024)
    body = msgpack.packb({"body": signed.body, "signature": signed.signature},
                         use_bin_type=True)
    return Notify(id=0, user_ids=users, envelope=Envelope(
        msg_id=notice_msg_id(sender.user_id, version), sender_user=sender.user_id,
        sender_device=0, ts=1, kind=NOTICE_KIND, body=body))


async def test_peer_notices_cannot_fill_a_queue_past_its_quotas(nursery) -> None:
    """n2 (hostile, valid node key) sends notices of ever new versions of its own
    account's list to a victim homed at n1 that never asked for that list: each is
    queued whole, past the device queue quota and the peer's byte quota."""
    abuse = AbuseLimits(queue_device_bytes=QUEUE, queue_account_bytes=QUEUE,
                        queue_peer_bytes=QUEUE)
    cluster = Cluster(nursery, make_configs(2, abuse=abuse))
    await cluster.start_all()
    with trio.fail_after(30):
        victim = device_homed_at(cluster.ring, "n1")
        mallory = device_homed_at(cluster.ring, "n2")
        await publish(cluster.url("n1"), victim)
        async with peer_session(cluster, "n2", "n1") as p:
            for v in range(2, 22):  # 20 notices of ~48 KiB: ~1 MiB, 4x the quotas
                await p.request(ForwardBatch(id=0, items=[
                    _notice(mallory, v, [victim.user_id])]))
        held = await cluster.storages["n1"].queue_bytes(victim.user_id)
        assert held <= QUEUE, f"{held} bytes of notices queued past a {QUEUE}-byte quota"


async def test_peer_bounces_cannot_fill_a_queue_past_its_quotas(nursery) -> None:
    """n2 (hostile) sends ``bounce`` envelopes of fresh msg_ids for a user homed at n1:
    each is queued (deduplicated only by msg_id), past every byte quota of the queue."""
    abuse = AbuseLimits(queue_device_bytes=QUEUE, queue_account_bytes=QUEUE,
                        queue_peer_bytes=QUEUE)
    cluster = Cluster(nursery, make_configs(2, abuse=abuse))
    await cluster.start_all()
    with trio.fail_after(30):
        victim = device_homed_at(cluster.ring, "n1")
        mallory = device_homed_at(cluster.ring, "n2")
        await publish(cluster.url("n1"), victim)
        body = msgpack.packb({"code": "too_large", "message": "m" * (48 * 1024),
                              "user_id": mallory.user_id}, use_bin_type=True)
        async with peer_session(cluster, "n2", "n1") as p:
            for _ in range(20):  # ~1 MiB, 4x the quotas
                await p.request(ForwardBatch(id=0, items=[BounceBack(id=0, envelope=Envelope(
                    msg_id=os.urandom(16), sender_user=victim.user_id, sender_device=0,
                    ts=1, kind="bounce", body=body))]))
        held = await cluster.storages["n1"].queue_bytes(victim.user_id)
        assert held <= QUEUE, f"{held} bytes of bounces queued past a {QUEUE}-byte quota"
