"""The commit thread's switch interval (storage._group_commit, "The GIL")."""

from __future__ import annotations

import sys

import pytest
import trio

from storage import _lmdb_layout as L
from storage._group_commit import HANDOVER_INTERVAL, GroupCommitWriter
from storage._lmdb_env import open_env
from storage.lmdb import LmdbStorage

USER = "a" * 52


async def test_short_interval_while_a_writer_runs_then_put_back(tmp_path):
    before = sys.getswitchinterval()
    assert before > HANDOVER_INTERVAL  # the interpreter's default, 5 ms
    with trio.fail_after(20):
        async with LmdbStorage.open(tmp_path / "a") as first:
            await first.enqueue([(USER, 1, b"x" * 100)])  # the thread ran a batch, waits again
            assert sys.getswitchinterval() == pytest.approx(HANDOVER_INTERVAL)
            async with LmdbStorage.open(tmp_path / "b") as second:
                await second.enqueue([(USER, 1, b"y" * 100)])
                assert sys.getswitchinterval() == pytest.approx(HANDOVER_INTERVAL)
            # the other writer still runs: its thread keeps the short interval
            assert sys.getswitchinterval() == pytest.approx(HANDOVER_INTERVAL)
            assert [i.envelope for i in await first.read_queue(USER, 1)] == [b"x" * 100]
        assert sys.getswitchinterval() == pytest.approx(before)


async def test_interval_left_alone_when_asked(tmp_path):
    before = sys.getswitchinterval()
    env = await open_env(tmp_path / "c", 16 << 20, 16, 1.0)
    try:
        dbs = L.Dbs.open(env)
        writer = GroupCommitWriter(env, dbs, handover_interval=0)
        with trio.fail_after(20):
            async with trio.open_nursery() as nursery:
                await nursery.start(writer.serve)
                stored = await writer.submit(lambda txn, dbs: txn.put(b"k", b"v", db=dbs.meta))
                assert stored is True
                assert sys.getswitchinterval() == pytest.approx(before)
                writer.close()
    finally:
        env.close()
    assert sys.getswitchinterval() == pytest.approx(before)
