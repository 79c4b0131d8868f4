"""Pipelined sends: many requests in flight per connection, answered by id, order kept."""

from __future__ import annotations

import os

import trio
from relay_harness import (
    Cluster,
    RawClient,
    UserDevice,
    device_homed_at,
    list_of,
    make_configs,
    publish,
    publish_list,
    session,
)

from relay.protocol.frames import (
    Ack,
    Copy,
    Deliver,
    Envelope,
    Error,
    Frame,
    GroupRecipient,
    GroupSend,
    Ok,
    Ping,
    Recipient,
    Send,
    Sent,
    Sync,
    Synced,
)
from relay.protocol.stored import encode_envelope
from storage import EnqueueRequest
from storage.memory import MemoryStorage

N = 1000
WINDOW = 128


async def pipeline(client: RawClient, frames: list[Frame], on_answer=None) -> dict[int, Frame]:
    """Send ``frames`` keeping up to ``WINDOW`` unanswered; return the answers by id.
    ``await on_answer(count)`` runs after each answer (pushes are skipped)."""
    answers: dict[int, Frame] = {}
    slots = trio.Semaphore(WINDOW)

    async def writer() -> None:
        for frame in frames:
            await slots.acquire()
            await client.send(frame)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(writer)
        while len(answers) < len(frames):
            frame = await client.recv()
            if frame.id == 0:
                continue
            assert frame.id not in answers, f"two answers to request {frame.id}"
            answers[frame.id] = frame
            slots.release()
            if on_answer is not None:
                await on_answer(len(answers))
    return answers


async def drain(client: RawClient, want: set[bytes]) -> list[bytes]:
    """Sync and take deliveries (acking each frame) until every msg id in ``want``
    arrived; return the msg ids in delivery order (duplicates included)."""
    await client.send(Sync(id=client.next_id()))
    got: list[bytes] = []
    while not want <= set(got):
        frame = await client.recv()
        if isinstance(frame, Deliver):
            got += [i.envelope.msg_id for i in frame.items if i.envelope.kind == "olm"]
            await client.send(Ack(id=0, seq=frame.items[-1].seq))
    return got


def three_devices(ring, home: str) -> list[UserDevice]:
    first = device_homed_at(ring, home)
    return [first, first.companion(1), first.companion(2)]


def to_all(devices: list[UserDevice], body: bytes) -> Recipient:
    return Recipient(devices[0].user_id, 1, [Copy(d.device_id, body) for d in devices])


async def test_pipelined_sends_to_three_devices_across_a_node_restart(nursery) -> None:
    cluster = Cluster(nursery, make_configs(2))
    await cluster.start_all()
    with trio.fail_after(60):
        alice = device_homed_at(cluster.ring, "n1")
        bob = three_devices(cluster.ring, "n2")
        await publish(cluster.url("n1"), alice)
        await publish_list(cluster.url("n2"), list_of(bob, 1))
        ids = [os.urandom(16) for _ in range(N)]
        frames = [Send(id=i + 10, msg_id=mid, recipients=[to_all(bob, b"%d" % i)])
                  for i, mid in enumerate(ids)]

        async def restart_midway(count: int) -> None:
            if count == N // 3:
                cluster.stop("n2")
            elif count == 2 * N // 3:
                await cluster.start("n2")

        async with session(cluster.url("n1"), alice) as a:
            answers = await pipeline(a, frames, restart_midway)
        statuses = [answers[f.id] for f in frames]
        assert all(isinstance(s, Sent) for s in statuses), {s for s in statuses if isinstance(s, Error)}
        acked = [mid for mid, s in zip(ids, statuses, strict=True) if s.status in ("stored", "queued")]
        assert len(acked) == N
        assert {s.status for s in statuses} == {"stored", "queued"}  # some went through the outbox
        for device in bob:
            async with session(cluster.url("n2"), device) as b:
                got = await drain(b, set(acked))
            assert got == acked, f"device {device.device_id}: lost, duplicated or reordered"


async def test_stale_devices_and_queue_full_in_a_pipeline(nursery) -> None:
    cluster = Cluster(nursery, make_configs(2, max_queue=20))
    await cluster.start_all()
    with trio.fail_after(30):
        alice = device_homed_at(cluster.ring, "n1")
        bob = device_homed_at(cluster.ring, "n1")
        carol = device_homed_at(cluster.ring, "n2")
        for d, home in ((alice, "n1"), (bob, "n1"), (carol, "n2")):
            await publish(cluster.url(home), d)
        filler = [(carol.user_id, 0, b"f")] * 20  # carol's queue is full
        await cluster.storages["n2"].enqueue(filler)
        ids = [os.urandom(16) for _ in range(12)]
        plan = {  # index -> (recipients, expected answer)
            4: ([Recipient(bob.user_id, 1, [Copy(0, b"4"), Copy(7, b"4")])], "stale_devices"),
            7: ([carol.recipient(b"7")], "queue_full"),
            8: ([bob.recipient(b"8"), carol.recipient(b"8")], "queue_full"),
        }
        frames = [Send(id=100 + i, msg_id=mid,
                       recipients=plan[i][0] if i in plan else [bob.recipient(b"%d" % i)])
                  for i, mid in enumerate(ids)]
        async with session(cluster.url("n1"), alice) as a:
            for f in frames:  # all twelve before any answer: read ahead, routed as a batch
                await a.send(f)
            answers: dict[int, Frame] = {}
            while len(answers) < len(frames):
                frame = await a.recv()
                answers[frame.id] = frame
        for i, f in enumerate(frames):
            answer = answers[f.id]
            if i in plan:
                assert isinstance(answer, Error) and answer.code == plan[i][1], (i, answer)
            else:
                assert answer == Sent(id=f.id, status="stored"), (i, answer)
        # bob gets the accepted ones, in order; message 8's part for bob (homed at the
        # sender's home) is not stored: carol's home refused it, and the sender's home
        # writes its own part only once the others have answered without a refusal
        want = [ids[i] for i in range(12) if i not in (4, 7, 8)]
        async with session(cluster.url("n1"), bob) as b:
            got = await drain(b, set(want))
        assert got == want
        assert await cluster.storages["n2"].queue_length(carol.user_id, 0) == 20


async def test_cumulative_acks_never_delete_what_was_not_delivered(nursery) -> None:
    cluster = Cluster(nursery, make_configs(1))
    storage = cluster.storages["n1"] = MemoryStorage()
    await cluster.start("n1")
    with trio.fail_after(20):
        bob = device_homed_at(cluster.ring, "n1")
        await publish(cluster.url("n1"), bob)
        alice = UserDevice()

        def env(i: int) -> bytes:
            return encode_envelope(Envelope(bytes([i]) * 16, alice.user_id, 0, 1, "olm", b"b"))

        await storage.enqueue_many([EnqueueRequest([(bob.user_id, 0, env(i))]) for i in range(3)])
        async with session(cluster.url("n1"), bob) as b:
            await b.send(Ack(id=0, seq=1000))  # before anything was delivered: clamped to 0
            assert await b.request(Ping(id=b.next_id())) == Ok(id=b._next)
            assert await storage.queue_length(bob.user_id, 0) == 3
            await b.send(Sync(id=b.next_id()))
            frame = await b.recv()
            assert isinstance(frame, Deliver) and [i.seq for i in frame.items] == [1, 2, 3]
            assert isinstance(await b.recv(), Synced)
            # two more arrive in storage but are not pushed yet (no wake-up): undelivered
            await storage.enqueue_many([EnqueueRequest([(bob.user_id, 0, env(i))])
                                        for i in (3, 4)])
            await b.send(Ack(id=0, seq=1000))  # clamped to 3, the highest seq delivered
        # the connection applies the acks it read before it closes
        assert [i.seq for i in await storage.read_queue(bob.user_id, 0)] == [4, 5]


async def test_sends_and_group_sends_in_one_pipeline_keep_their_order(nursery) -> None:
    cluster = Cluster(nursery, make_configs(2))
    await cluster.start_all()
    with trio.fail_after(30):
        alice = device_homed_at(cluster.ring, "n1")
        bob = three_devices(cluster.ring, "n2")
        carol = device_homed_at(cluster.ring, "n1")
        await publish(cluster.url("n1"), alice)
        await publish(cluster.url("n1"), carol)
        await publish_list(cluster.url("n2"), list_of(bob, 1))
        ids = [os.urandom(16) for _ in range(200)]
        frames: list[Frame] = []
        for i, mid in enumerate(ids):
            if i % 3:
                frames.append(Send(id=10 + i, msg_id=mid, recipients=[to_all(bob, b"s")]))
            else:  # one ciphertext for bob's three devices (n2) and carol (n1)
                frames.append(GroupSend(id=10 + i, msg_id=mid, body=b"g", recipients=[
                    GroupRecipient(bob[0].user_id, 1, [0, 1, 2]),
                    GroupRecipient(carol.user_id, 1, [0])]))
        async with session(cluster.url("n1"), alice) as a:
            answers = await pipeline(a, frames)
        assert all(answers[f.id] == Sent(id=f.id, status="stored") for f in frames)
        for device in bob:
            async with session(cluster.url("n2"), device) as b:
                got = await drain_all(b, set(ids))
            assert got == ids
        async with session(cluster.url("n1"), carol) as c:
            assert await drain_all(c, set(ids[::3])) == ids[::3]


async def drain_all(client: RawClient, want: set[bytes]) -> list[bytes]:
    """Like :func:`drain`, for envelopes of any message kind (olm and group)."""
    await client.send(Sync(id=client.next_id()))
    got: list[bytes] = []
    while not want <= set(got):
        frame = await client.recv()
        if isinstance(frame, Deliver):
            got += [i.envelope.msg_id for i in frame.items if i.envelope.kind in ("olm", "group")]
            await client.send(Ack(id=0, seq=frame.items[-1].seq))
    return got
