"""The sender's own other devices get a copy of what it sends; the home checks exactly that set."""

from __future__ import annotations

import os

import trio
from relay_harness import connect, device_homed_at, list_of, publish, session

from relay.protocol.frames import (
    Copy,
    Deliver,
    Error,
    Ok,
    PutDevices,
    Recipient,
    Send,
    Sent,
    Sync,
)


async def test_own_other_devices_are_checked_exactly(cluster3) -> None:
    with trio.fail_after(15):
        alice = device_homed_at(cluster3.ring, "n1")
        laptop, tablet = alice.companion(1), alice.companion(2)
        bob = device_homed_at(cluster3.ring, "n2")
        await publish(cluster3.url("n2"), bob)
        async with connect(cluster3.url("n1")) as c:
            await c.hello()
            put = await c.request(PutDevices(id=2, device_list=list_of([alice, laptop, tablet], 1)))
            assert put == Ok(id=2)

        def own(*device_ids: int) -> Recipient:
            return Recipient(alice.user_id, 1, [Copy(d, b"own %d" % d) for d in device_ids])

        mid = os.urandom(16)
        async with session(cluster3.url("n1"), alice) as a:
            for i, wrong in enumerate([own(1), own(0, 1, 2), own(1, 2, 3), own(1, 1, 2)]):
                err = await a.request(Send(id=3 + i, msg_id=os.urandom(16),
                                           recipients=[bob.recipient(), wrong]))
                assert isinstance(err, Error) and err.code == "stale_devices", wrong
                assert err.user_id == alice.user_id and err.device_list is not None
            sent = await a.request(Send(id=9, msg_id=mid, recipients=[bob.recipient(), own(1, 2)]))
            assert sent == Sent(id=9, status="stored")
        async with session(cluster3.url("n1"), laptop) as lap:
            # only the sending device itself is left out, whichever it is
            sent = await lap.request(Send(id=2, msg_id=os.urandom(16), recipients=[own(0, 2)]))
            assert sent == Sent(id=2, status="stored")
            await lap.send(Sync(id=3))
            first = await lap.recv()
            assert isinstance(first, Deliver)
            env = first.items[0].envelope
            assert (env.msg_id, env.sender_user, env.sender_device, env.body) == (
                mid, alice.user_id, 0, b"own 1")
        n1 = cluster3.storages["n1"]
        assert await n1.queue_length(alice.user_id, 2) == 2
        assert await n1.queue_length(alice.user_id, 0) == 1


async def test_a_send_the_recipients_home_refuses_leaves_no_copy_on_own_devices(nursery) -> None:
    """Finding 2 (docs/reliability.md): the recipient's home refuses its part
    (``storage_full``): the sender's home does not keep the copies for the sender's
    other devices, so no device shows a message that was answered refused. The
    next send, which fits, reaches both."""
    from relay_harness import Cluster, make_configs

    from storage.memory import MemoryStorage

    cluster = Cluster(nursery, make_configs(2))
    n2 = cluster.storages["n2"] = MemoryStorage(capacity_bytes=8_000)
    await cluster.start_all()
    n1 = cluster.storages["n1"]
    with trio.fail_after(20):
        alice = device_homed_at(cluster.ring, "n1")
        laptop = alice.companion(1)
        bob = device_homed_at(cluster.ring, "n2")
        await publish(cluster.url("n2"), bob)
        async with connect(cluster.url("n1")) as c:
            await c.hello()
            assert await c.request(PutDevices(id=2, device_list=list_of([alice, laptop], 1))) == Ok(id=2)
        own = Recipient(alice.user_id, 1, [Copy(1, b"own")])
        async with session(cluster.url("n1"), alice) as a:
            big = await a.request(Send(id=3, msg_id=os.urandom(16),
                                       recipients=[bob.recipient(os.urandom(20_000)), own]))
            assert isinstance(big, Error) and big.code == "storage_full"
            assert await n1.queue_length(alice.user_id, 1) == 0
            mid = os.urandom(16)
            small = await a.request(Send(id=4, msg_id=mid, recipients=[bob.recipient(), own]))
            assert small == Sent(id=4, status="stored")
        assert await n1.queue_length(alice.user_id, 1) == 1
        assert await n2.queue_length(bob.user_id, 0) == 1
