"""Issue 9: pipelined sends of 1,000 messages from one device to a user with three
devices on another home, with one node process SIGKILLed in the middle and restarted:
every acknowledged message arrives once, in order, on every device.

Real ``wa-relay serve`` processes (LMDB, fsync on commit) on 127.0.0.1. The sender is
a client that keeps up to ``WINDOW`` sends in flight and, after losing its
connection, resends the sends that got no answer (same ``msg_id``, in order) before
any new one, as docs/protocol.md ("Order") asks of a client that wants order across
reconnects. Each receiving device syncs, acks every ``deliver`` frame it handled, and
reconnects when its home goes away; it may be sent an envelope again after a crash
(at least once on the wire), never a message stored twice or out of order.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import trio
from relay_harness import UserDevice, device_homed_at, list_of, publish, publish_list, session

from relay.config import init_cluster, load_cluster
from relay.config.ring import Ring
from relay.net import ConnectFailed, ConnectionLost
from relay.protocol.frames import Ack, Copy, Deliver, Error, Recipient, Send, Sent, Sync
from relay.testing import LoggedProcess, free_base_port, tool

N = 1000
WINDOW = 100  # sends in flight (the node announces 128)
KILL_AT = 400  # answers received before the kill
GUARD = 60  # seconds (the run takes a few on 2 cores)
_LOST = (ConnectFailed, ConnectionLost, trio.BrokenResourceError, trio.ClosedResourceError)


class Nodes:
    """``wa-relay serve`` processes of one cluster directory, by node id."""

    def __init__(self, root: Path, configs: list[Path]) -> None:
        self.root = root
        self.configs = {p.parent.name: p for p in configs}
        self.procs: dict[str, LoggedProcess] = {}
        self.starts = 0

    async def start(self, node_id: str) -> None:
        self.starts += 1
        proc = LoggedProcess([*tool("wa-relay"), "serve", "--config", str(self.configs[node_id])],
                             stdout_log=self.root / f"{node_id}.out",
                             stderr_log=self.root / f"{node_id}.err", name=node_id)
        self.procs[node_id] = proc
        ready = await trio.to_thread.run_sync(proc.next_ready, time.monotonic() + 30)
        assert ready is not None, proc.stderr_tail()

    async def kill(self, node_id: str) -> None:
        code = await trio.to_thread.run_sync(self.procs[node_id].kill, 10)
        assert code == -9

    async def stop_all(self) -> None:
        for proc in self.procs.values():
            await trio.to_thread.run_sync(proc.stop, 15)


class Sender:
    """One device pipelining ``frames``; ``status[i]`` is the answer to frame ``i``."""

    def __init__(self, url: str, device: UserDevice, frames: list[Send]) -> None:
        self.url = url
        self.device = device
        self.frames = frames
        self.status: dict[int, str] = {}
        self.errors: list[Error] = []
        self.reconnects = 0
        self.kill_now = trio.Event()
        self.done = trio.Event()

    async def run(self) -> None:
        while len(self.status) < len(self.frames):
            try:
                async with session(self.url, self.device) as c:
                    await self._pipeline(c)
            except* _LOST:
                self.reconnects += 1
                await trio.sleep(0.05)  # a retry pause, not a wait for an event
        self.done.set()

    async def _pipeline(self, c) -> None:  # noqa: ANN001 - a relay_harness.RawClient
        todo = [i for i in range(len(self.frames)) if i not in self.status]  # resends first
        by_id: dict[int, int] = {}
        room = trio.Semaphore(WINDOW)

        async def read() -> None:
            while len(self.status) < len(self.frames):
                answer = await c.recv()
                i = by_id.pop(answer.id, None)
                if i is None:
                    continue
                if isinstance(answer, Sent):
                    self.status[i] = answer.status
                else:
                    self.errors.append(answer)
                    self.status[i] = "refused"
                room.release()
                if len(self.status) >= KILL_AT:
                    self.kill_now.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(read)
            for i in todo:
                await room.acquire()
                rid = c.next_id()
                by_id[rid] = i
                await c.send(Send(id=rid, msg_id=self.frames[i].msg_id,
                                  recipients=self.frames[i].recipients))


async def receive(url: str, device: UserDevice, want: int, got: list[tuple[int, bytes]]) -> None:
    """Sync ``device`` (reconnecting while its home is away) until ``want`` distinct
    messages arrived; every delivered ``(seq, msg_id)`` is appended to ``got``."""
    while len({m for _, m in got}) < want:
        try:
            async with session(url, device) as c:
                await c.send(Sync(id=c.next_id()))
                while len({m for _, m in got}) < want:
                    frame = await c.recv()
                    if isinstance(frame, Deliver):
                        got.extend((item.seq, item.envelope.msg_id) for item in frame.items)
                        await c.send(Ack(id=0, seq=frame.items[-1].seq))
        except* _LOST:
            await trio.sleep(0.05)
        except* AssertionError:  # the home answered auth with an error while starting
            await trio.sleep(0.05)


@pytest.mark.parametrize("victim", ["recipient_home", "sender_home"])
async def test_pipelined_sends_survive_a_sigkill_of_a_node(tmp_path, victim) -> None:
    configs = init_cluster(tmp_path / "c", nodes=2, base_port=free_base_port(2),
                           admin_base_port=0)
    ring = Ring(load_cluster(tmp_path / "c" / "cluster.toml"))
    url = {n.id: n.url for n in ring.nodes}
    nodes = Nodes(tmp_path, configs)
    try:
        with trio.fail_after(GUARD):
            for node_id in url:
                await nodes.start(node_id)
            alice = device_homed_at(ring, "n1")
            bob = device_homed_at(ring, "n2")
            bobs = [bob, bob.companion(1), bob.companion(2)]
            await publish(url["n1"], alice)
            await publish_list(url["n2"], list_of(bobs, 1))
            copies = [Recipient(bob.user_id, 1, [Copy(d.device_id, b"m%d" % k) for d in bobs])
                      for k in range(N)]
            frames = [Send(id=0, msg_id=os.urandom(16), recipients=[r]) for r in copies]
            sender = Sender(url["n1"], alice, frames)
            got: dict[int, list[tuple[int, bytes]]] = {d.device_id: [] for d in bobs}
            async with trio.open_nursery() as nursery:
                nursery.start_soon(sender.run)
                for d in bobs:
                    nursery.start_soon(receive, url["n2"], d, N, got[d.device_id])
                await sender.kill_now.wait()
                home = "n1" if victim == "sender_home" else "n2"
                await nodes.kill(home)
                await nodes.start(home)
    finally:
        await nodes.stop_all()
    assert sender.errors == []
    assert set(sender.status.values()) <= {"stored", "queued"}
    assert len(sender.status) == N  # every send acknowledged (resent after the kill if needed)
    want = [f.msg_id for f in frames]
    for device_id, items in got.items():
        seq_of: dict[bytes, int] = {}
        for seq, msg_id in items:  # a redelivery repeats its seq: never stored twice
            assert seq_of.setdefault(msg_id, seq) == seq, (device_id, msg_id)
        first = list(dict.fromkeys(m for _, m in items))
        assert first == want, f"device {device_id}: not every message once and in order"
        assert [seq_of[m] for m in first] == sorted(seq_of[m] for m in first)
    assert nodes.starts == 3
    # the kill hit the pipeline: the sender's connection broke (its unanswered sends
    # were resent), or the sender's home put the parts for the dead home in its outbox
    if victim == "sender_home":
        assert sender.reconnects >= 1
    else:
        assert "queued" in sender.status.values()

