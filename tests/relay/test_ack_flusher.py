"""A connection's acks (:class:`relay.serving.acks.AckFlusher`) over LMDB: submitted from
the step that posts them and from the previous commit's hand-back, without a step of
the flusher's task; coalesced while one is in flight; a refused one retried by the task."""

from __future__ import annotations

import errno
import logging

import lmdb
import trio

from relay.serving.acks import RETRY_DELAY, AckFlusher
from storage.lmdb import LmdbStorage

BOB = "b" * 52
LOG = logging.getLogger("test")


class _Faults:
    """The LMDB writer's test-only fault hook: EIO at the next ``eio`` commits."""

    def __init__(self) -> None:
        self.eio = 0

    def __call__(self, point: str) -> None:
        if self.eio:
            self.eio -= 1
            raise lmdb.Error("mdb_txn_commit", errno.EIO)


class _Steps(trio.abc.Instrument):
    def __init__(self, task: trio.lowlevel.Task) -> None:
        self.task = task
        self.steps = 0

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        self.steps += task is self.task


async def test_acks_go_without_a_step_of_the_flushers_task(tmp_path) -> None:
    with trio.fail_after(10):
        async with LmdbStorage.open(tmp_path / "db") as st:
            await st.enqueue([(BOB, 0, b"e%d" % i) for i in range(10)])
            flusher = AckFlusher(st, BOB, 0, LOG)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(flusher.run)
                await trio.testing.wait_all_tasks_blocked()
                steps = _Steps(next(iter(nursery.child_tasks)))
                trio.lowlevel.add_instrument(steps)
                flusher.post(3)  # submitted at once
                flusher.post(5)  # in flight: coalesced into the next, from the hand-back
                flusher.post(7)
                flusher.post(6)  # below what was posted: nothing
                await flusher.flushed()
                trio.lowlevel.remove_instrument(steps)
                assert steps.steps == 0
                assert flusher.applied == 7 and flusher.calls == 2 and flusher.nowait == 2
                assert await st.queue_length(BOB, 0) == 3
                nursery.cancel_scope.cancel()


async def test_a_refused_ack_is_retried_by_the_task(tmp_path) -> None:
    faults = _Faults()
    with trio.fail_after(10):
        async with LmdbStorage.open(tmp_path / "db", fault_hook=faults) as st:
            await st.enqueue([(BOB, 0, b"e%d" % i) for i in range(10)])
            flusher = AckFlusher(st, BOB, 0, LOG)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(flusher.run)
                faults.eio = 1
                started = trio.current_time()
                flusher.post(4)  # its commit fails: storage_unavailable
                flusher.post(6)  # in flight: left to the hand-back, which sees the failure
                await flusher.flushed()  # the task retried up to 6 after RETRY_DELAY
                assert trio.current_time() - started >= RETRY_DELAY
                assert flusher.applied == 6 and flusher.calls == 1 and flusher.nowait == 1
                assert await st.queue_length(BOB, 0) == 4
                flusher.post(8)  # works again without the task
                await flusher.flushed()
                assert flusher.nowait == 2 and await st.queue_length(BOB, 0) == 2
                nursery.cancel_scope.cancel()
