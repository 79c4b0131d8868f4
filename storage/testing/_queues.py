"""Conformance: per-device queues (seq, dedupe, bounds, atomicity, ack, expiry)."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from ..base import QueueItem
from ..errors import QueueFull
from ._base import ALICE, BOB, ConformanceBase, uid

T0 = 1_800_000_000.0


class QueueConformance(ConformanceBase):
    """Enqueue, read, ack, purge, expire."""

    async def test_enqueue_read_in_seq_order(self) -> None:
        async with self.opened() as st:
            assert await st.enqueue([(ALICE, 0, b"e1"), (ALICE, 0, b"")], now=T0) == [1, 2]
            assert await st.enqueue([(ALICE, 0, b"\x00e3")], now=T0 + 1) == [3]
            assert await st.read_queue(ALICE, 0) == [
                QueueItem(1, T0, b"e1"), QueueItem(2, T0, b""), QueueItem(3, T0 + 1, b"\x00e3"),
            ]
            assert await st.queue_length(ALICE, 0) == 3
            assert await st.read_queue(ALICE, 1) == []
            assert await st.queue_length(BOB, 0) == 0

    async def test_seqs_are_per_device_in_items_order(self) -> None:
        async with self.opened() as st:
            items = [(ALICE, 0, b"a0"), (BOB, 0, b"b0"), (ALICE, 1, b"a1"), (ALICE, 0, b"a0'")]
            assert await st.enqueue(items, now=T0) == [1, 1, 1, 2]
            assert await st.enqueue([(BOB, 0, b"b0'")], now=T0) == [2]
            assert [i.envelope for i in await st.read_queue(ALICE, 0)] == [b"a0", b"a0'"]
            assert [i.envelope for i in await st.read_queue(BOB, 0)] == [b"b0", b"b0'"]

    async def test_default_now_is_wall_clock(self) -> None:
        async with self.opened() as st:
            import time

            before = time.time()
            await st.enqueue([(ALICE, 0, b"x")])
            after = time.time()
            [item] = await st.read_queue(ALICE, 0)
            assert before - 1 <= item.ts <= after + 1

    async def test_read_after_seq_and_limit(self) -> None:
        async with self.opened() as st:
            await st.enqueue([(ALICE, 0, b"e%d" % i) for i in range(1, 11)], now=T0)
            page = await st.read_queue(ALICE, 0, after_seq=3, limit=4)
            assert [i.seq for i in page] == [4, 5, 6, 7]
            assert [i.envelope for i in page] == [b"e4", b"e5", b"e6", b"e7"]
            assert [i.seq for i in await st.read_queue(ALICE, 0, after_seq=8)] == [9, 10]
            assert await st.read_queue(ALICE, 0, after_seq=10) == []
            assert len(await st.read_queue(ALICE, 0, limit=256)) == 10

    async def test_ack_deletes_up_to_and_seq_not_reused(self) -> None:
        async with self.opened() as st:
            await st.enqueue([(ALICE, 0, b"e")] * 5, now=T0)
            await st.enqueue([(ALICE, 1, b"other")], now=T0)
            assert await st.ack(ALICE, 0, 3) == 3
            assert [i.seq for i in await st.read_queue(ALICE, 0)] == [4, 5]
            assert await st.ack(ALICE, 0, 3) == 0
            assert await st.ack(ALICE, 0, 99) == 2
            assert await st.queue_length(ALICE, 0) == 0
            assert await st.queue_length(ALICE, 1) == 1
            assert await st.enqueue([(ALICE, 0, b"next")], now=T0) == [6]
            assert await st.ack(BOB, 7, 10) == 0

    async def test_purge_device_queue_seq_not_reused(self) -> None:
        async with self.opened() as st:
            await st.enqueue([(ALICE, 0, b"e")] * 4 + [(ALICE, 1, b"k")], now=T0)
            assert await st.purge_device(ALICE, 0) == 4
            assert await st.queue_length(ALICE, 0) == 0
            assert await st.queue_length(ALICE, 1) == 1
            assert await st.purge_device(ALICE, 0) == 0
            assert await st.enqueue([(ALICE, 0, b"again")], now=T0) == [5]

    async def test_dedupe_is_idempotent(self) -> None:
        async with self.opened() as st:
            items = [(ALICE, 0, b"m"), (BOB, 0, b"m")]
            assert await st.enqueue(items, dedupe=b"msg-1", now=T0) == [1, 1]
            assert await st.enqueue(items, dedupe=b"msg-1", now=T0 + 5) is None
            assert await st.enqueue([(BOB, 1, b"z")], dedupe=b"msg-1", now=T0) is None
            assert await st.queue_length(ALICE, 0) == 1
            assert await st.queue_length(BOB, 1) == 0
            assert await st.enqueue(items, dedupe=b"msg-2", now=T0) == [2, 2]
            assert await st.enqueue(items, now=T0) == [3, 3]  # no dedupe id: always stored

    async def test_concurrent_same_dedupe_stored_once(self) -> None:
        async with self.opened() as st:
            results: list[list[int] | None] = []

            async def send() -> None:
                results.append(await st.enqueue([(ALICE, 0, b"m")], dedupe=b"same", now=T0))

            async with trio.open_nursery() as nursery:
                for _ in range(20):
                    nursery.start_soon(send)
            assert sorted(results, key=lambda r: r is None) == [[1]] + [None] * 19
            assert await st.queue_length(ALICE, 0) == 1

    async def test_max_queue_full_stores_nothing(self) -> None:
        async with self.opened() as st:
            assert await st.enqueue([(ALICE, 0, b"e")] * 3, max_queue=4, now=T0) == [1, 2, 3]
            with pytest.raises(QueueFull):
                await st.enqueue(
                    [(BOB, 0, b"b"), (ALICE, 0, b"e"), (ALICE, 0, b"e")],
                    max_queue=4, dedupe=b"d1", now=T0,
                )
            assert await st.queue_length(ALICE, 0) == 3
            assert await st.queue_length(BOB, 0) == 0
            assert await st.enqueue([(ALICE, 0, b"e")], max_queue=4, now=T0) == [4]
            with pytest.raises(QueueFull):
                await st.enqueue([(ALICE, 0, b"e")], max_queue=4, now=T0)
            # The failed call recorded neither its dedupe id nor any seq.
            assert await st.ack(ALICE, 0, 2) == 2
            assert await st.enqueue(
                [(BOB, 0, b"b"), (ALICE, 0, b"e"), (ALICE, 0, b"e")],
                max_queue=4, dedupe=b"d1", now=T0,
            ) == [1, 5, 6]

    async def test_enqueue_is_atomic_across_devices(self) -> None:
        async with self.opened() as st:
            await st.enqueue([(BOB, 2, b"x")] * 2, now=T0)
            items = [(ALICE, 0, b"a"), (ALICE, 1, b"a"), (BOB, 2, b"b"), (BOB, 3, b"b")]
            with pytest.raises(QueueFull):
                await st.enqueue(items, max_queue=2, now=T0)
            for user, dev in [(ALICE, 0), (ALICE, 1), (BOB, 3)]:
                assert await st.queue_length(user, dev) == 0
            assert await st.queue_length(BOB, 2) == 2

    async def test_concurrent_enqueues_unique_contiguous_seqs(self) -> None:
        users = [uid(i) for i in range(5)]
        got: dict[tuple[str, int], list[tuple[int, bytes]]] = {(u, 0): [] for u in users}
        async with self.opened() as st:

            async def send(n: int) -> None:
                user = users[n % 5]
                env = b"env-%d" % n
                [seq] = await st.enqueue([(user, 0, env)], now=T0) or [0]
                got[(user, 0)].append((seq, env))

            async with trio.open_nursery() as nursery:
                for n in range(500):
                    nursery.start_soon(send, n)
            for (user, dev), pairs in got.items():
                assert sorted(seq for seq, _ in pairs) == list(range(1, 101))
                stored = await st.read_queue(user, dev, limit=1000)
                assert [(i.seq, i.envelope) for i in stored] == sorted(pairs)

    async def test_expire_drops_old_items_and_dedupe_ids(self) -> None:
        async with self.opened() as st:
            await st.enqueue([(ALICE, 0, b"old1"), (BOB, 0, b"old2")], dedupe=b"d-old", now=T0)
            await st.enqueue([(ALICE, 0, b"new")], dedupe=b"d-new", now=T0 + 100)
            assert await st.expire(T0 + 100) == 2
            assert [(i.seq, i.envelope) for i in await st.read_queue(ALICE, 0)] == [(2, b"new")]
            assert await st.queue_length(BOB, 0) == 0
            assert await st.enqueue([(ALICE, 0, b"retry")], dedupe=b"d-new", now=T0) is None
            assert await st.enqueue([(ALICE, 0, b"again")], dedupe=b"d-old", now=T0 + 200) == [3]
            assert await st.expire(T0) == 0
            assert await st.enqueue([(BOB, 0, b"b")], now=T0) == [2]

    async def test_cancelled_enqueue_is_all_or_nothing(self) -> None:
        async with self.opened() as st:
            with trio.move_on_after(0):
                await st.enqueue([(ALICE, 0, b"a"), (ALICE, 0, b"b")], now=T0)
            assert await st.queue_length(ALICE, 0) in (0, 2)
            [seq] = await st.enqueue([(ALICE, 0, b"c")], now=T0) or [0]
            assert [i.seq for i in await st.read_queue(ALICE, 0)][-1] == seq

    async def test_cancelled_waiters_leave_whole_calls(self) -> None:
        async with self.opened() as st:
            async with trio.open_nursery() as nursery:
                for n in range(50):
                    nursery.start_soon(st.enqueue, [(BOB, 0, b"%d" % n), (BOB, 0, b"%d" % n)])
                await trio.testing.wait_all_tasks_blocked()
                nursery.cancel_scope.cancel()
            # A cancelled call may still be applied after its caller left, but a call
            # made later is applied after it.
            [after] = await st.enqueue([(BOB, 0, b"after")], now=T0) or [0]
            *items, last = await st.read_queue(BOB, 0, limit=1000)
            assert (last.seq, last.envelope) == (after, b"after") == (len(items) + 1, b"after")
            # Each call stored both of its copies, with consecutive seqs, or nothing.
            assert len(items) % 2 == 0
            for first, second in zip(items[::2], items[1::2], strict=True):
                assert first.envelope == second.envelope and second.seq == first.seq + 1
