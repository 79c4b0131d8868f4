"""Deliveries written from a commit's hand-back (LMDB): an idle, caught-up pusher takes
just-committed envelopes without a wake-up of its task or a read of its queue, and
order, window, expiry and the ack clamp hold as for the pusher's own reads."""

from __future__ import annotations

import os

import pytest
import trio
from relay_harness import Cluster, device_homed_at, make_configs, publish, session

from relay.node import Node
from relay.protocol import read_frame
from relay.protocol.frames import Ack, Deliver, Envelope, Send, Sent, Sync, Synced
from relay.protocol.stored import encode_envelope
from relay.services.delivery import READ_BATCH, DeviceRegistry, Pusher
from storage import EnqueueRequest
from storage.lmdb import LmdbStorage

BOB, ALICE = "b" * 52, "a" * 52


def _env(i: int) -> bytes:
    return encode_envelope(Envelope(i.to_bytes(16, "big"), ALICE, 3, 1, "olm", b"body %d" % i))


class _Conn:
    """The two writes of a connection as the pusher sees them, into one ordered list:
    its task's ``send`` and the hand-back's ``send_nowait`` (taken unless ``busy``)."""

    def __init__(self) -> None:
        self.frames: list[object] = []
        self.busy = False
        self.pusher: Pusher | None = None
        self.arrived = trio.Event()

    async def send(self, data: bytes) -> None:
        self._take([data])

    def send_nowait(self, datas: list[bytes], last_seq: int) -> bool:
        if self.busy:
            return False
        self._take(datas)
        return True

    def _take(self, datas: list[bytes]) -> None:
        self.frames += [read_frame(d) for d in datas]
        self.arrived.set()
        self.arrived = trio.Event()

    def offer(self, items: list[tuple[int, float, bytes]]) -> bool:  # the Session's
        assert self.pusher is not None
        return self.pusher.offer(items)

    def seqs(self) -> list[int]:
        return [i.seq for f in self.frames if isinstance(f, Deliver) for i in f.items]


async def test_a_backlog_and_commits_meanwhile_arrive_in_order_once(tmp_path) -> None:
    """A device with a backlog longer than one read, and commits while the pusher reads
    it and after: every envelope once, in seq order; the later ones from the hand-back."""
    registry = DeviceRegistry()
    conn = _Conn()
    n_backlog, n_live = 2 * READ_BATCH + 5, 60
    with trio.fail_after(30):
        async with LmdbStorage.open(tmp_path / "db") as st:
            assert st.deliver_enqueued(registry.stored)
            for i in range(1, n_backlog + 1):
                await st.enqueue([(BOB, 0, _env(i))])
            conn.pusher = Pusher(st, registry, BOB, 0, conn.send, send_nowait=conn.send_nowait)
            with registry.register(BOB, 0, conn):  # type: ignore[arg-type]
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(conn.pusher.run)
                    total = n_backlog
                    for i in range(n_live):
                        if i % 7:
                            await st.enqueue([(BOB, 0, _env(total + 1))])  # while it reads
                            total += 1
                        else:  # several requests (one commit) for the device
                            await st.enqueue_many([EnqueueRequest([(BOB, 0, _env(total + k)),
                                                                   (ALICE, 0, _env(0))])
                                                   for k in (1, 2, 3)])
                            total += 3
                    while len(conn.seqs()) < total:
                        await conn.arrived.wait()
                    nursery.cancel_scope.cancel()
    assert conn.seqs() == list(range(1, total + 1))
    assert sum(isinstance(f, Synced) for f in conn.frames) == 1
    assert conn.pusher.offered > 0  # the path under test was taken
    assert conn.pusher.delivered == total


async def test_an_offer_is_written_before_the_enqueuer_resumes(tmp_path) -> None:
    """Caught up: the deliver is written in the hand-back itself (the pusher's task takes
    no step); busy writer, full window or a gap: a wake-up as before, same order."""
    registry = DeviceRegistry()
    conn = _Conn()
    steps = 0

    class _Steps(trio.abc.Instrument):
        def before_task_step(self, task: trio.lowlevel.Task) -> None:
            nonlocal steps
            steps += task is pusher_task

    with trio.fail_after(30):
        async with LmdbStorage.open(tmp_path / "db") as st:
            assert st.deliver_enqueued(registry.stored)
            conn.pusher = Pusher(st, registry, BOB, 0, conn.send, window=4,
                                 send_nowait=conn.send_nowait)
            with registry.register(BOB, 0, conn):  # type: ignore[arg-type]
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(conn.pusher.run)
                    while not conn.frames:
                        await conn.arrived.wait()
                    assert isinstance(conn.frames[0], Synced)
                    pusher_task = next(iter(nursery.child_tasks))
                    instrument = _Steps()
                    trio.lowlevel.add_instrument(instrument)
                    for i in (1, 2):
                        await st.enqueue([(BOB, 0, _env(i))])
                        assert conn.seqs()[-1] == i  # already written, no checkpoint taken
                    trio.lowlevel.remove_instrument(instrument)
                    assert steps == 0 and conn.pusher.offered == 2
                    conn.busy = True  # the writer is busy: the pusher is woken instead
                    await st.enqueue([(BOB, 0, _env(3))])
                    while conn.pusher.delivered < 3:
                        await conn.arrived.wait()
                    assert conn.pusher.offered == 2
                    conn.busy = False
                    await st.enqueue([(BOB, 0, _env(4))])  # window 4: full after this one
                    assert conn.pusher.offered == 3
                    await st.enqueue([(BOB, 0, _env(5))])  # no room: waits for an ack
                    assert conn.pusher.offered == 3 and conn.seqs()[-1] == 4
                    conn.pusher.on_ack(2)
                    while conn.pusher.delivered < 5:
                        await conn.arrived.wait()
                    # a gap (seq 7 before 6 reached the pusher) is never offered past
                    while conn.pusher._parked is None:
                        await trio.lowlevel.checkpoint()
                    assert not conn.pusher.offer([(7, 0.0, _env(7))])
                    assert conn.pusher.offer([(6, 0.0, _env(6))])  # 3 in flight of 4
                    assert not conn.pusher.offer([(7, 0.0, _env(7))])  # window full
                    nursery.cancel_scope.cancel()
    assert conn.seqs() == [1, 2, 3, 4, 5, 6]


async def test_an_expired_offer_is_left_to_the_pusher(tmp_path) -> None:
    registry = DeviceRegistry()
    conn = _Conn()
    with trio.fail_after(30):
        async with LmdbStorage.open(tmp_path / "db") as st:
            conn.pusher = Pusher(st, registry, BOB, 0, conn.send, queue_ttl=60.0,
                                 clock=lambda: 1000.0, send_nowait=conn.send_nowait)
            with registry.register(BOB, 0, conn):  # type: ignore[arg-type]
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(conn.pusher.run)
                    while conn.pusher._parked is None:
                        await trio.lowlevel.checkpoint()
                    assert not conn.pusher.offer([(1, 900.0, _env(1))])  # 100 s old
                    assert conn.pusher.offer([(1, 990.0, _env(1)), (2, 990.0, _env(2))])
                    assert not conn.pusher.offer([(2, 990.0, _env(2))])  # had it already
                    nursery.cancel_scope.cancel()
    assert conn.seqs() == [1, 2] and conn.pusher.offered == 2


async def test_a_node_delivers_in_order_through_a_full_socket(nursery, tmp_path) -> None:
    """A real LMDB node: a backlog, then large messages while the device reads nothing
    (its socket fills: writes from the hand-back are taken in part, the rest owed),
    then it reads: every message once, in send order, each frame intact; acks clamp."""
    (config,) = make_configs(1, storage="lmdb", data_dir=tmp_path)
    cluster = Cluster(nursery, [config])
    nodes: list[Node] = []
    alice = device_homed_at(cluster.ring, "n1")
    bob = device_homed_at(cluster.ring, "n1")
    url = cluster.url("n1")
    sent: list[bytes] = []

    async def send(a, n: int, size: int, b=None) -> None:
        for _ in range(n):
            if b is not None:  # acks all written (clamped): the sender's quota drains
                await b.send(Ack(id=0, seq=2**40))
            msg_id = os.urandom(16)
            answer = await a.request(Send(id=a.next_id(), msg_id=msg_id,
                                          recipients=[bob.recipient(os.urandom(size))]))
            assert isinstance(answer, Sent), answer
            sent.append(msg_id)

    with trio.fail_after(60):
        await cluster.start("n1", on_node=nodes.append)
        await publish(url, alice)
        await publish(url, bob)
        async with session(url, alice) as a:
            await send(a, 40, 100)  # the backlog
            async with session(url, bob) as b:
                await b.send(Sync(id=b.next_id()))
                got: list[bytes] = []
                while True:  # the backlog, then synced
                    frame = await b.recv()
                    if isinstance(frame, Synced):
                        break
                    if isinstance(frame, Deliver):
                        got += [i.envelope.msg_id for i in frame.items]
                await send(a, 30, 100)  # caught up: from the hand-back
                await send(a, 60, 200_000, b)  # 12 MB, bob reads nothing: the socket fills
                while len(got) < len(sent):
                    frame = await b.recv()
                    if isinstance(frame, Deliver):
                        got += [i.envelope.msg_id for i in frame.items]
                        await b.send(Ack(id=0, seq=frame.items[-1].seq))
                conn = nodes[0].registry.session(bob.user_id, 0)
                pusher = conn._pusher  # type: ignore[union-attr]
                assert pusher is not None and pusher.offered > 0
                assert got == sent
    assert await nodes[0].storage.queue_length(bob.user_id, 0) == 0


async def test_an_owed_tail_goes_before_a_pong(nursery) -> None:
    """A write from outside a task that the socket took in part: nothing else is written
    from then on (a second one is refused), and trio-websocket's Pong to the client's
    Ping writes the owed tail first, so every message arrives whole and in order."""
    from functools import partial

    from trio_websocket import WebSocketRequest, open_websocket_url

    from relay.net.wsio import GatedWebSocket
    from relay.net.wsserver import serve_gated_websocket

    owed = trio.Event()
    done = trio.Event()
    written: list[bytes] = []

    async def handler(request: WebSocketRequest) -> None:
        ws = await request.accept()
        assert isinstance(ws, GatedWebSocket)
        while not owed.is_set():
            message = os.urandom(256 * 1024)
            left = ws.send_nowait([message])
            assert left is not None  # the stream is free and open
            written.append(message)
            if left:
                owed.set()
        assert ws.send_nowait([b"not now"]) is None  # a tail is owed
        await done.wait()

    server = await nursery.start(partial(
        serve_gated_websocket, handler, "127.0.0.1", 0, None, message_queue_size=4,
        max_message_size=1 << 20, receive_buffer_size=65536, connect_timeout=5,
        disconnect_timeout=1))
    with trio.fail_after(30):
        async with open_websocket_url(f"ws://127.0.0.1:{server.port}/",
                                      message_queue_size=1, max_message_size=1 << 20) as ws:
            await owed.wait()
            got: list[bytes] = []
            async with trio.open_nursery() as inner:
                inner.start_soon(ws.ping)  # answered after the owed tail
                while len(got) < len(written):
                    got.append(await ws.get_message())
            assert got == written
            done.set()


async def test_an_owed_tail_goes_before_a_keepalive_ping(nursery) -> None:
    """The node's own keepalive Ping (``ws.ping()``, as :class:`AcceptedLink` sends it)
    while a tail is owed: the tail is written first, then the Ping, which the client
    answers once it has read every message whole."""
    from functools import partial

    from trio_websocket import WebSocketRequest, open_websocket_url

    from relay.net.wsio import GatedWebSocket
    from relay.net.wsserver import serve_gated_websocket

    owed = trio.Event()
    ponged = trio.Event()
    written: list[bytes] = []

    async def handler(request: WebSocketRequest) -> None:
        ws = await request.accept()
        assert isinstance(ws, GatedWebSocket)
        while not owed.is_set():
            message = os.urandom(256 * 1024)
            left = ws.send_nowait([message])
            assert left is not None
            written.append(message)
            if left:
                owed.set()
        await ws.ping(b"keepalive")  # returns once the client's Pong arrived
        ponged.set()
        await trio.sleep_forever()

    server = await nursery.start(partial(
        serve_gated_websocket, handler, "127.0.0.1", 0, None, message_queue_size=4,
        max_message_size=1 << 20, receive_buffer_size=65536, connect_timeout=5,
        disconnect_timeout=1))
    with trio.fail_after(30):
        async with open_websocket_url(f"ws://127.0.0.1:{server.port}/",
                                      message_queue_size=1, max_message_size=1 << 20) as ws:
            await owed.wait()
            got = [await ws.get_message() for _ in range(len(written))]
            assert got == written
            await ponged.wait()


async def test_a_write_from_the_hand_back_stays_within_one_writes_bound(nursery) -> None:
    """``FrameWriter.write_nowait`` takes what the writer task would take in one write:
    several frames above ``WRITE_BYTES`` are refused (nothing written: the pusher sends
    them), one frame of any size is taken (an owed tail at most one frame long)."""
    from functools import partial

    from trio_websocket import WebSocketRequest, open_websocket_url

    from relay.net.writer import WRITE_BYTES, FrameWriter
    from relay.net.wsserver import serve_gated_websocket

    done = trio.Event()
    big = os.urandom(WRITE_BYTES + 1)

    async def handler(request: WebSocketRequest) -> None:
        ws = await request.accept()
        async with trio.open_nursery() as inner:
            writer = FrameWriter(ws, "test", on_progress=lambda: None,
                                 on_remote_close=lambda reason: None)
            inner.start_soon(writer.run, inner.cancel_scope)
            half = WRITE_BYTES // 2 + 1
            assert not writer.write_nowait([b"x" * half, b"y" * half])
            assert writer.write_nowait([b"a", b"b"])
            assert writer.write_nowait([big])
            await writer.send(b"end")
            await done.wait()
            inner.cancel_scope.cancel()

    server = await nursery.start(partial(
        serve_gated_websocket, handler, "127.0.0.1", 0, None, message_queue_size=4,
        max_message_size=1 << 20, receive_buffer_size=65536, connect_timeout=5,
        disconnect_timeout=1))
    with trio.fail_after(30):
        async with open_websocket_url(f"ws://127.0.0.1:{server.port}/",
                                      message_queue_size=4, max_message_size=1 << 20) as ws:
            got = [await ws.get_message() for _ in range(4)]
            assert got == [b"a", b"b", big, b"end"]
            done.set()


async def test_under_tls_the_pusher_is_woken_as_before(nursery, tmp_path) -> None:
    """``wss://``: nothing is written from the hand-back (no plain socket to write to);
    live deliveries still arrive in order through the pusher's own reads."""
    from relay.testing import node_configs

    cluster = Cluster(nursery, node_configs(1, storage="lmdb", tls=True, data_dir=tmp_path))
    nodes: list[Node] = []
    alice = device_homed_at(cluster.ring, "n1")
    bob = device_homed_at(cluster.ring, "n1")
    url = cluster.url("n1")
    with trio.fail_after(30):
        await cluster.start("n1", on_node=nodes.append)
        assert url.startswith("wss://")
        await publish(url, alice)
        await publish(url, bob)
        async with session(url, alice) as a, session(url, bob) as b:
            await b.send(Sync(id=b.next_id()))
            assert isinstance(await b.recv(), Synced)
            sent = []
            for _ in range(5):
                sent.append(os.urandom(16))
                answer = await a.request(Send(id=a.next_id(), msg_id=sent[-1],
                                              recipients=[bob.recipient(b"x")]))
                assert isinstance(answer, Sent), answer
            got: list[bytes] = []
            while len(got) < len(sent):
                frame = await b.recv()
                if isinstance(frame, Deliver):
                    got += [i.envelope.msg_id for i in frame.items]
            assert got == sent
            pusher = nodes[0].registry.session(bob.user_id, 0)._pusher  # type: ignore[union-attr]
            assert pusher is not None and pusher.offered == 0 and pusher.delivered == 5


async def test_pipelined_senders_keep_their_order_per_receiver(nursery, tmp_path) -> None:
    """Three devices each write 40 sends at once (no waiting for answers) to one caught-up
    device: their runs commit together and are offered from the hand-backs; the receiver
    gets every message once, and each sender's in the order that sender wrote them
    (docs/protocol.md, "Order")."""
    (config,) = make_configs(1, storage="lmdb", data_dir=tmp_path)
    cluster = Cluster(nursery, [config])
    nodes: list[Node] = []
    senders = [device_homed_at(cluster.ring, "n1") for _ in range(3)]
    bob = device_homed_at(cluster.ring, "n1")
    url = cluster.url("n1")
    order: dict[bytes, tuple[int, int]] = {}  # msg_id -> (sender, position)

    async def pipeline(k: int, client) -> None:
        ids = []
        for i in range(40):
            msg_id = os.urandom(16)
            order[msg_id] = (k, i)
            ids.append(client.next_id())
            await client.send(Send(id=ids[-1], msg_id=msg_id,
                                   recipients=[bob.recipient(b"m%d" % i)]))
        answers = {}
        while len(answers) < len(ids):
            frame = await client.recv()
            answers[frame.id] = frame
        assert all(isinstance(answers[i], Sent) for i in ids), answers

    with trio.fail_after(60):
        await cluster.start("n1", on_node=nodes.append)
        for d in [*senders, bob]:
            await publish(url, d)
        async with session(url, bob) as b:
            await b.send(Sync(id=b.next_id()))
            assert isinstance(await b.recv(), Synced)
            async with session(url, senders[0]) as c0, session(url, senders[1]) as c1, \
                    session(url, senders[2]) as c2, trio.open_nursery() as inner:
                for k, c in enumerate((c0, c1, c2)):
                    inner.start_soon(pipeline, k, c)
            got: list[bytes] = []
            while len(got) < len(order):
                frame = await b.recv()
                if isinstance(frame, Deliver):
                    got += [i.envelope.msg_id for i in frame.items]
                    await b.send(Ack(id=0, seq=frame.items[-1].seq))
            pusher = nodes[0].registry.session(bob.user_id, 0)._pusher  # type: ignore[union-attr]
            assert pusher is not None and pusher.offered > 0
    assert sorted(got) == sorted(order)
    for k in range(3):
        assert [order[m][1] for m in got if order[m][0] == k] == list(range(40))


class _BrokenHandBack(LmdbStorage):
    """A bug in what a commit hands back: the stored envelopes come out as ``None``
    (the offer raises TypeError in the commit's hand-back, on the event loop)."""

    def deliver_enqueued(self, hook) -> bool:
        return super().deliver_enqueued(
            lambda user_id, device_id, items: hook(user_id, device_id,
                                                    [(s, ts, None) for s, ts, _ in items]))


async def test_a_bug_in_an_offer_ends_only_that_connection(tmp_path) -> None:
    """An exception raised by an offer in a commit's hand-back ends the receiving device's
    connection at its boundary (``error internal``, close 1011), never the event loop:
    the sender's send is answered, the node serves on, and the message is delivered
    on the device's next connection (the pusher's own read)."""
    from relay.net import ConnectionLost
    from relay.protocol.frames import Error, Ok, Ping

    (config,) = make_configs(1)
    with trio.fail_after(30):
        async with _BrokenHandBack.open(tmp_path / "n1") as st, \
                trio.open_nursery() as node_nursery:  # ends before the store closes
            cluster = Cluster(node_nursery, [config])
            cluster.storages["n1"] = st
            alice = device_homed_at(cluster.ring, "n1")
            bob = device_homed_at(cluster.ring, "n1")
            url = cluster.url("n1")
            await cluster.start("n1")
            await publish(url, alice)
            await publish(url, bob)
            async with session(url, alice) as a:
                async with session(url, bob) as b:
                    await b.send(Sync(id=b.next_id()))
                    assert isinstance(await b.recv(), Synced)
                    msg_id = os.urandom(16)
                    answer = await a.request(Send(id=a.next_id(), msg_id=msg_id,
                                                  recipients=[bob.recipient(b"x")]))
                    assert isinstance(answer, Sent), answer
                    frames = []
                    with pytest.raises(ConnectionLost):
                        while True:
                            frames.append(await b.recv())
                    assert b.close_code == 1011
                    assert any(isinstance(f, Error) and f.code == "internal" for f in frames)
                ping = Ping(id=a.next_id())
                assert await a.request(ping) == Ok(id=ping.id)  # the node serves on
                async with session(url, bob) as b:
                    await b.send(Sync(id=b.next_id()))
                    frame = await b.recv()
                    assert isinstance(frame, Deliver)
                    assert frame.items[0].envelope.msg_id == msg_id
            cluster.stop("n1")
