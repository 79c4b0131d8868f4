"""LmdbStorage.notify_enqueued: devices reported from the commit's hand-back."""

from __future__ import annotations

import trio

from storage import EnqueueRequest, QueueFull
from storage.lmdb import LmdbStorage

ALICE, BOB, CAROL = "a" * 52, "b" * 52, "c" * 52


async def test_reports_every_device_that_got_envelopes_before_the_caller_resumes(tmp_path):
    seen: list[tuple[str, int]] = []
    with trio.fail_after(20):
        async with LmdbStorage.open(tmp_path / "db") as st:
            assert st.notify_enqueued(lambda user, device: seen.append((user, device)))
            await st.enqueue([(BOB, 1, b"x")], max_queue=1)  # BOB/1 is full from now on
            assert seen == [(BOB, 1)]
            seen.clear()
            answers = await st.enqueue_many([
                EnqueueRequest([(BOB, 2, b"a"), (CAROL, 1, b"b")], dedupe=b"m1"),
                EnqueueRequest([(BOB, 1, b"c")], max_queue=1),   # refused: queue full
                EnqueueRequest([(CAROL, 2, b"d")], dedupe=b"m1"),  # a duplicate: nothing stored
                EnqueueRequest([(ALICE, 7, b"e")]),
            ])
            # reported before enqueue_many returned, refusals and duplicates left out
            assert seen == [(BOB, 2), (CAROL, 1), (ALICE, 7)]
            assert isinstance(answers[1], QueueFull) and answers[2] is None
            assert [i.envelope for i in await st.read_queue(ALICE, 7)] == [b"e"]


async def test_a_new_hook_replaces_the_old_one(tmp_path):
    first: list[tuple[str, int]] = []
    second: list[tuple[str, int]] = []
    with trio.fail_after(20):
        async with LmdbStorage.open(tmp_path / "db") as st:
            st.notify_enqueued(lambda user, device: first.append((user, device)))
            st.notify_enqueued(lambda user, device: second.append((user, device)))
            assert await st.enqueue([(BOB, 1, b"x")]) == [1]
    assert (first, second) == ([], [(BOB, 1)])
