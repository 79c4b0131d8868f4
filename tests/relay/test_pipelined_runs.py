"""A device's runs of sends are pipelined on LMDB (relay.serving.runs): the next run is
submitted while the previous one commits; answers and deliveries keep their order."""

from __future__ import annotations

import os
import threading

import trio
import trio.lowlevel
from relay_harness import Cluster, device_homed_at, make_configs, publish, session
from test_pipeline import drain

from relay.protocol.frames import Envelope, Error, Frame, Send, Sent
from relay.protocol.stored import encode_envelope
from storage.lmdb import LmdbStorage


class Gate:
    """The LMDB writer's fault hook as a gate: while armed, a commit waits until opened."""

    def __init__(self) -> None:
        self.armed = False
        self.open = threading.Event()
        self.waiting = threading.Event()

    def __call__(self, point: str) -> None:
        if self.armed and not self.open.is_set():
            self.waiting.set()
            self.open.wait(20)


async def test_next_run_is_submitted_while_the_previous_one_commits(nursery, tmp_path) -> None:
    gate = Gate()
    async with LmdbStorage.open(tmp_path / "n1", fault_hook=gate) as st:
        cluster = Cluster(nursery, make_configs(1, max_queue=3))
        cluster.storages["n1"] = st
        await cluster.start("n1")
        with trio.fail_after(30):
            alice, bob, carol = (device_homed_at(cluster.ring, "n1") for _ in range(3))
            for d in (alice, bob, carol):
                await publish(cluster.url("n1"), d)
            filler = encode_envelope(Envelope(os.urandom(16), bob.user_id, 0, 1, "olm", b"f"))
            await st.enqueue([(carol.user_id, 0, filler)] * 2)  # one more fits
            ids = [os.urandom(16) for _ in range(3)]
            s1 = Send(id=11, msg_id=ids[0], recipients=[bob.recipient(b"1"), carol.recipient(b"1")])
            s2 = Send(id=12, msg_id=ids[1], recipients=[carol.recipient(b"2")])  # queue_full
            s3 = Send(id=13, msg_id=ids[2], recipients=[bob.recipient(b"3")])
            async with session(cluster.url("n1"), alice) as a:
                # first contact is recorded durably before the send is stored: not now
                warm = os.urandom(16)
                assert await a.request(Send(id=10, msg_id=warm, recipients=[
                    bob.recipient(b"0")])) == Sent(id=10, status="stored")
                await st.add_correspondents(alice.user_id, [carol.user_id])
                gate.armed = True
                await a.send(s1)
                while not gate.waiting.is_set():  # noqa: ASYNC110 - the commit thread: poll, deadline above
                    await trio.sleep(0.005)
                await a.send(s2)
                await a.send(s3)
                # s1's commit is held: the run of s2 and s3 is queued behind it all the same
                while st.writer.queued < 2:  # noqa: ASYNC110 - poll, deadline above
                    await trio.sleep(0.005)
                gate.open.set()
                answers: list[Frame] = [await a.recv() for _ in range(3)]
            assert answers[0] == Sent(id=11, status="stored")  # in reading order
            assert isinstance(answers[1], Error) and answers[1].code == "queue_full"
            assert answers[2] == Sent(id=13, status="stored")
            async with session(cluster.url("n1"), bob) as b:
                assert await drain(b, {warm, ids[0], ids[2]}) == [warm, ids[0], ids[2]]
            assert await st.queue_length(carol.user_id, 0) == 3
        cluster.stop("n1")


async def test_many_runs_on_lmdb_arrive_once_and_in_order(nursery, tmp_path) -> None:
    cluster = Cluster(nursery, make_configs(2, storage="lmdb", data_dir=tmp_path))
    await cluster.start_all()
    with trio.fail_after(60):
        alice = device_homed_at(cluster.ring, "n1")
        bob = device_homed_at(cluster.ring, "n1")  # local: pipelined runs
        carol = device_homed_at(cluster.ring, "n2")  # forwarded: runs wait for n2's answers
        await publish(cluster.url("n1"), alice)
        await publish(cluster.url("n1"), bob)
        await publish(cluster.url("n2"), carol)
        ids = [os.urandom(16) for _ in range(300)]
        async with session(cluster.url("n1"), alice) as a:
            answers: dict[int, Frame] = {}

            async def reader() -> None:
                while len(answers) < len(ids):
                    frame = await a.recv()
                    answers[frame.id] = frame

            async with trio.open_nursery() as inner:
                inner.start_soon(reader)
                for i, mid in enumerate(ids):
                    to = [bob.recipient(b"%d" % i)] + ([carol.recipient(b"%d" % i)] if i % 7 == 0 else [])
                    await a.send(Send(id=100 + i, msg_id=mid, recipients=to))
                    if i % 10 == 0:
                        await trio.lowlevel.checkpoint()  # let runs form in several sizes
        assert all(answers[100 + i] == Sent(id=100 + i, status="stored") for i in range(len(ids)))
        async with session(cluster.url("n1"), bob) as b:
            assert await drain(b, set(ids)) == ids
        async with session(cluster.url("n2"), carol) as c:
            want = ids[::7]
            assert await drain(c, set(want)) == want
