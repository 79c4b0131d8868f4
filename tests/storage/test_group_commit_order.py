"""storage._group_commit, "Submission order": submissions are applied in call order,
also while the queue is full and callers wait for room."""

from __future__ import annotations

import threading

import pytest
import trio
import trio.testing

from storage import _lmdb_layout as L
from storage._group_commit import GroupCommitWriter
from storage._lmdb_env import open_env


class Gate:
    """The writer's fault hook as a gate: while closed, a commit waits for it."""

    def __init__(self) -> None:
        self.open = threading.Event()
        self.waiting = threading.Event()

    def __call__(self, point: str) -> None:
        if not self.open.is_set():
            self.waiting.set()
            self.open.wait(20)


async def _until(predicate, what: str) -> None:
    with trio.fail_after(10):  # fails the test with `what` not reached
        while not predicate():  # noqa: ASYNC110 - the commit thread's progress: poll, deadline above
            await trio.sleep(0.005)


@pytest.fixture
async def gated(tmp_path):
    env = await open_env(tmp_path / "db", 16 << 20, 16, 1.0)
    gate = Gate()
    applied: list[int] = []
    writer = GroupCommitWriter(env, L.Dbs.open(env), queue_size=2, fault_hook=gate)
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(writer.serve)
            yield writer, gate, applied, nursery
            gate.open.set()
            writer.close()
    finally:
        env.close()


def _op(applied: list[int], i: int):
    def op(txn, dbs):
        applied.append(i)
        return i
    return op


async def test_callers_waiting_for_room_are_queued_in_call_order(gated) -> None:
    writer, gate, applied, nursery = gated
    answers: list[int] = []

    async def submit(i: int) -> None:
        answers.append(await writer.submit(_op(applied, i)))

    nursery.start_soon(submit, 0)
    await _until(gate.waiting.is_set, "the first commit waits at the gate")
    for i in range(1, 8):  # queue_size 2: from the third on they wait for room
        nursery.start_soon(submit, i)
        await trio.testing.wait_all_tasks_blocked()
    assert writer.queued == 2
    gate.open.set()
    await _until(lambda: len(answers) == 8, "every submission answered")
    assert applied == list(range(8))


async def test_a_caller_cancelled_while_waiting_for_room_queues_nothing(gated) -> None:
    writer, gate, applied, nursery = gated
    nursery.start_soon(writer.submit, _op(applied, 0))
    await _until(gate.waiting.is_set, "the first commit waits at the gate")
    nursery.start_soon(writer.submit, _op(applied, 1))
    await trio.testing.wait_all_tasks_blocked()
    with trio.CancelScope() as scope:
        scope.deadline = trio.current_time() + 0.05
        await writer.submit(_op(applied, 2))
    assert scope.cancelled_caught
    later = trio.Event()

    async def last() -> None:
        await writer.submit(_op(applied, 3))
        later.set()

    nursery.start_soon(last)
    gate.open.set()
    with trio.fail_after(10):
        await later.wait()
    assert applied == [0, 1, 3]


async def test_callers_waiting_for_room_when_the_writer_closes_get_closed(gated) -> None:
    writer, gate, applied, nursery = gated
    nursery.start_soon(writer.submit, _op(applied, 0))
    await _until(gate.waiting.is_set, "the first commit waits at the gate")
    nursery.start_soon(writer.submit, _op(applied, 1))
    await trio.testing.wait_all_tasks_blocked()
    refused = trio.Event()

    async def waiting() -> None:
        with pytest.raises(trio.ClosedResourceError):
            await writer.submit(_op(applied, 2))
        refused.set()

    nursery.start_soon(waiting)
    await trio.testing.wait_all_tasks_blocked()
    writer.close()
    with trio.fail_after(10):
        await refused.wait()
    gate.open.set()
    await _until(lambda: applied == [0, 1], "the queued ones still applied")
