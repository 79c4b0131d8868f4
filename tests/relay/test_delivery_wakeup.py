"""The pusher's read after a wake-up (LMDB): no checkpoint, so a delivery leaves one
scheduler round after the enqueue's commit wakes it, not two."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from relay.protocol import read_frame
from relay.protocol.frames import Deliver, Envelope, Synced
from relay.protocol.stored import encode_envelope
from relay.services.delivery import DeviceRegistry, Pusher
from storage.lmdb import LmdbStorage

BOB, ALICE = "b" * 52, "a" * 52


def _env(i: int) -> bytes:
    return encode_envelope(Envelope(bytes([i]) * 16, ALICE, 3, 1, "olm", b"body %d" % i))


class _Steps(trio.abc.Instrument):
    """Counts the task steps of one task."""

    def __init__(self) -> None:
        self.task: trio.lowlevel.Task | None = None
        self.steps = 0

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        if task is self.task:
            self.steps += 1


async def test_read_queue_now_reads_what_read_queue_reads(tmp_path) -> None:
    with trio.fail_after(20):
        async with LmdbStorage.open(tmp_path / "db") as st:
            await st.enqueue([(BOB, 0, _env(i)) for i in range(1, 6)])
            got = st.read_queue_now(BOB, 0, after_seq=2, limit=2)
            assert [(i.seq, i.envelope) for i in got] == [(3, _env(3)), (4, _env(4))]
            assert got == await st.read_queue(BOB, 0, after_seq=2, limit=2)
            assert st.read_queue_now(BOB, 0, after_seq=5) == []
        with pytest.raises(trio.ClosedResourceError):
            st.read_queue_now(BOB, 0)


async def test_a_woken_pusher_takes_one_step_per_delivery(tmp_path) -> None:
    registry = DeviceRegistry()
    sent: list[object] = []
    arrived = trio.Event()

    async def send(data: bytes) -> None:
        sent.append(read_frame(data))
        arrived.set()

    steps = _Steps()
    with trio.fail_after(20):
        async with LmdbStorage.open(tmp_path / "db") as st:
            pusher = Pusher(st, registry, BOB, 0, send)
            with registry.register(BOB, 0, object()):  # type: ignore[arg-type]
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(pusher.run)
                    while not sent:  # the (empty) backlog, then synced
                        await arrived.wait()
                    assert isinstance(sent[0], Synced)
                    steps.task = next(t for t in nursery.child_tasks)
                    trio.lowlevel.add_instrument(steps)
                    for i in range(1, 6):
                        arrived = trio.Event()
                        await st.enqueue([(BOB, 0, _env(i))])
                        registry.notify(BOB, 0)
                        await arrived.wait()
                    trio.lowlevel.remove_instrument(steps)
                    nursery.cancel_scope.cancel()
    delivered = [i.seq for f in sent[1:] if isinstance(f, Deliver) for i in f.items]
    assert delivered == [1, 2, 3, 4, 5]
    assert steps.steps == 5  # woken, read, written: one step each (was two: read's checkpoint)


async def test_a_pusher_woken_by_the_commit_delivers_in_the_enqueuers_round(tmp_path) -> None:
    """With ``notify_enqueued`` (what a node does on LMDB) nobody calls ``notify``: the
    commit's hand-back wakes the pusher together with the enqueuing task, so the
    ``deliver`` is written by the time that task has taken one more scheduler round."""
    registry = DeviceRegistry()
    sent: list[object] = []
    arrived = trio.Event()

    async def send(data: bytes) -> None:
        sent.append(read_frame(data))
        arrived.set()

    with trio.fail_after(20):
        async with LmdbStorage.open(tmp_path / "db") as st:
            assert st.notify_enqueued(registry.notify)
            pusher = Pusher(st, registry, BOB, 0, send)
            with registry.register(BOB, 0, object()):  # type: ignore[arg-type]
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(pusher.run)
                    while not sent:
                        await arrived.wait()
                    for i in range(1, 6):
                        before = len(sent)
                        await st.enqueue([(BOB, 0, _env(i))])
                        await trio.lowlevel.cancel_shielded_checkpoint()
                        assert len(sent) == before + 1  # already written
                    nursery.cancel_scope.cancel()
    delivered = [i.seq for f in sent[1:] if isinstance(f, Deliver) for i in f.items]
    assert delivered == [1, 2, 3, 4, 5]
