"""A hostile peer node and ``forward_batch {queued: true}`` (docs/protocol.md, "Order",
rule 6): the flag only lets the destination drop copies for devices no longer in the
recipient's list. It must never deliver a copy to a device outside the current list,
accept a part that misses a current device, or skip the checks on the sender."""

from __future__ import annotations

import os
import time

import trio
from relay_harness import device_homed_at, peer_session, publish

from relay.protocol.frames import (
    Copy,
    Error,
    Forward,
    ForwardBatch,
    GroupForward,
    GroupRecipient,
    Ok,
    Recipient,
    Results,
)


def _forward(sender: str, user: str, devices: list[int]) -> Forward:
    return Forward(id=0, msg_id=os.urandom(16), sender_user=sender, sender_device=0,
                   ts=int(time.time() * 1000),
                   recipients=[Recipient(user, 1, [Copy(d, b"c%d" % d) for d in devices])])


async def test_queued_batches_never_reach_an_unlisted_device_nor_skip_checks(cluster2) -> None:
    cluster = cluster2
    with trio.fail_after(20):
        alice = device_homed_at(cluster.ring, "n1")
        bob = device_homed_at(cluster.ring, "n2")
        carol = device_homed_at(cluster.ring, "n2")  # homed at the victim node itself
        await publish(cluster.url("n2"), bob)
        await publish(cluster.url("n2"), carol)
        group = GroupForward(id=0, msg_id=os.urandom(16), sender_user=alice.user_id,
                             sender_device=0, ts=int(time.time() * 1000), body=b"g",
                             recipients=[GroupRecipient(bob.user_id, 1, [0, 7, 9])])
        items = [_forward(alice.user_id, bob.user_id, [0, 7]),   # 7 was never listed
                 _forward(alice.user_id, bob.user_id, [7]),      # misses device 0
                 _forward(carol.user_id, bob.user_id, [0, 7]),   # sender not homed at n1
                 group]
        async with peer_session(cluster, "n1", "n2") as p:
            answer = await p.request(ForwardBatch(id=3, items=items, queued=True))
        assert isinstance(answer, Results), answer
        codes = [a.code if isinstance(a, Error) else a.TYPE for a in answer.items]
        assert codes == ["ok", "stale_devices", "bad_request", "ok"], answer.items
        st = cluster.storages["n2"]
        for device_id in (7, 9):
            assert await st.read_queue(bob.user_id, device_id) == []
        assert len(await st.read_queue(bob.user_id, 0)) == 2
        assert isinstance(answer.items[0], Ok)
