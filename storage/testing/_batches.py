"""Conformance: the batch methods (enqueue_many, ack_many, claim_keys, outbox batches)."""

from __future__ import annotations

import pytest
import trio

from ..base import EnqueueRequest, OutboxEntry
from ..errors import QueueFull, StorageError, StorageFull
from ._base import ALICE, BOB, ConformanceBase, needs, uid

T0 = 1_800_000_000.0


class BatchConformance(ConformanceBase):
    """Each request of a batch is atomic alone, answered alone, applied in list order."""

    async def test_enqueue_many_answers_each_request_in_order(self) -> None:
        async with self.opened() as st:
            await st.enqueue([(BOB, 0, b"old")] * 2, now=T0)
            answers = await st.enqueue_many([
                EnqueueRequest([(ALICE, 0, b"a1"), (BOB, 0, b"b1")], dedupe=b"m1", now=T0),
                EnqueueRequest([(BOB, 0, b"b2")], max_queue=3, now=T0),  # BOB would hold 4
                EnqueueRequest([(ALICE, 0, b"a2")], dedupe=b"m1", now=T0),  # duplicate of the first
                EnqueueRequest([(ALICE, 0, b"a3"), (ALICE, 1, b"c")], now=T0 + 1),
                EnqueueRequest([], now=T0),
            ])
            assert answers[0] == [1, 3]
            assert isinstance(answers[1], QueueFull) and isinstance(answers[1], StorageError)
            assert answers[2:] == [None, [2, 1], []]
            assert [(i.seq, i.envelope) for i in await st.read_queue(ALICE, 0)] == [
                (1, b"a1"), (2, b"a3")]
            assert [i.envelope for i in await st.read_queue(BOB, 0)] == [b"old", b"old", b"b1"]
            assert await st.enqueue_many([]) == []

    async def test_enqueue_many_seqs_grow_along_the_list(self) -> None:
        async with self.opened() as st:
            reqs = [EnqueueRequest([(ALICE, n % 3, b"%d" % n)], now=T0) for n in range(300)]
            answers = await st.enqueue_many(reqs)
            for dev in range(3):
                seqs = [a[0] for n, a in enumerate(answers) if n % 3 == dev]  # type: ignore[index]
                assert seqs == list(range(1, 101))
                items = await st.read_queue(ALICE, dev, limit=1000)
                assert [i.envelope for i in items] == [b"%d" % n for n in range(dev, 300, 3)]

    async def test_enqueue_many_concurrent_batches_keep_their_own_order(self) -> None:
        async with self.opened() as st:
            got: dict[int, list[int]] = {}

            async def batch(k: int) -> None:
                answers = await st.enqueue_many(
                    [EnqueueRequest([(BOB, 0, b"%d-%d" % (k, n))], now=T0) for n in range(20)])
                got[k] = [a[0] for a in answers]  # type: ignore[index]

            async with trio.open_nursery() as nursery:
                for k in range(10):
                    nursery.start_soon(batch, k)
            for seqs in got.values():
                assert seqs == sorted(seqs)
            assert sorted(s for seqs in got.values() for s in seqs) == list(range(1, 201))
            by_seq = {i.seq: i.envelope for i in await st.read_queue(BOB, 0, limit=500)}
            for k, seqs in got.items():
                assert [by_seq[s] for s in seqs] == [b"%d-%d" % (k, n) for n in range(20)]

    async def test_enqueue_many_malformed_argument_stores_nothing(self) -> None:
        async with self.opened() as st:
            with pytest.raises((ValueError, TypeError)):
                await st.enqueue_many([
                    EnqueueRequest([(ALICE, 0, b"ok")], now=T0),
                    EnqueueRequest([("bad|user", 0, b"x")], now=T0),
                ])
            assert await st.queue_length(ALICE, 0) == 0

    async def test_enqueue_many_skips_a_refused_senders_later_requests(self) -> None:
        """Once a sender's request is refused, its later requests of the same call to
        any of the same devices are refused with the same error, unwritten; other
        senders, other devices and requests without a sender are stored."""
        async with self.opened() as st:
            await st.enqueue([(BOB, 0, b"old")] * 2, now=T0)
            a0, a1, c0 = (ALICE, 0), (ALICE, 1), (uid("carol"), 0)
            answers = await st.enqueue_many([
                EnqueueRequest([(ALICE, 0, b"x1")], sender=a0, now=T0),           # stored
                EnqueueRequest([(BOB, 0, b"r1")], max_queue=2, sender=a0, now=T0),  # refused
                EnqueueRequest([(BOB, 0, b"r2"), (BOB, 1, b"r2")], sender=a0, now=T0),  # skipped
                EnqueueRequest([(BOB, 1, b"r3")], sender=a0, now=T0),  # skipped: r2 had BOB 1
                EnqueueRequest([(BOB, 0, b"o1")], sender=a1, now=T0),  # another sending device
                EnqueueRequest([(BOB, 0, b"n1")], now=T0),               # no sender
                EnqueueRequest([(BOB, 2, b"r4")], sender=a0, now=T0),  # another device of BOB
                EnqueueRequest([(BOB, 0, b"c1")], dedupe=b"dc1", sender=c0, now=T0),
            ])
            assert answers[0] == [1]
            assert isinstance(answers[1], QueueFull)
            assert isinstance(answers[2], QueueFull) and isinstance(answers[3], QueueFull)
            assert answers[4:] == [[3], [4], [1], [5]]
            assert [i.envelope for i in await st.read_queue(BOB, 0)] == [
                b"old", b"old", b"o1", b"n1", b"c1"]
            assert await st.queue_length(BOB, 1) == 0
            # The skip is scoped to one call: the sender's next call is applied.
            assert await st.enqueue_many([EnqueueRequest([(BOB, 1, b"r5")], sender=a0, now=T0)]
                                         ) == [[1]]

    async def test_enqueue_many_skip_is_checked_before_dedupe(self) -> None:
        a0 = (ALICE, 0)
        async with self.opened() as st:
            await st.enqueue([(BOB, 0, b"m2")], dedupe=b"m2", now=T0)
            answers = await st.enqueue_many([
                EnqueueRequest([(BOB, 0, b"m1")], max_queue=1, sender=a0, now=T0),
                EnqueueRequest([(BOB, 0, b"m2")], dedupe=b"m2", sender=a0, now=T0),
            ])
            assert isinstance(answers[0], QueueFull) and isinstance(answers[1], QueueFull)
            assert await st.queue_length(BOB, 0) == 1
            with pytest.raises(TypeError):
                await st.enqueue_many([EnqueueRequest([(BOB, 0, b"x")], sender=("a", "0"))])  # type: ignore[arg-type]

    async def test_ack_many_is_cumulative_in_list_order(self) -> None:
        async with self.opened() as st:
            await st.enqueue([(ALICE, 0, b"a")] * 5 + [(BOB, 1, b"b")] * 3, now=T0)
            assert await st.ack_many([
                (ALICE, 0, 2), (BOB, 1, 1), (ALICE, 0, 4), (ALICE, 0, 3), (BOB, 9, 7),
                (BOB, 1, 0),
            ]) == [2, 1, 2, 0, 0, 0]
            assert [i.seq for i in await st.read_queue(ALICE, 0)] == [5]
            assert [i.seq for i in await st.read_queue(BOB, 1)] == [2, 3]
            assert await st.ack_many([]) == []
            assert await st.queue_length(ALICE, 0) == 1

    async def test_claim_keys_one_transaction_distinct_keys(self) -> None:
        async with self.opened() as st:
            await st.add_one_time_keys(ALICE, 0, [("k1", b"one"), ("k2", b"two")])
            await st.add_one_time_keys(ALICE, 1, [("j1", b"j")])
            await st.set_fallback_key(ALICE, 1, "fb", b"fallback")
            got = await st.claim_keys([(ALICE, 0), (ALICE, 1), (ALICE, 0), (ALICE, 0),
                                       (ALICE, 1), (BOB, 0)])
            assert got[0] is not None and got[2] is not None and got[0][0] != got[2][0]
            assert {got[0][:2], got[2][:2]} == {("k1", b"one"), ("k2", b"two")}
            assert not got[0][2] and not got[2][2]
            assert got[1] == ("j1", b"j", False)
            assert got[3] is None
            assert got[4] == ("fb", b"fallback", True)
            assert got[5] is None
            assert await st.count_one_time_keys(ALICE, 0) == 0
            assert await st.claim_keys([]) == []

    async def test_outbox_batches(self) -> None:
        async with self.opened() as st:
            first = await st.outbox_put("n2", b"p0")
            ids = await st.outbox_put_many([("n3", b"p1"), ("n2", b"p2"), ("n3", b"p3")])
            assert ids == sorted(ids) and ids[0] > first and len(set(ids)) == 3
            assert await st.outbox_put_many([]) == []
            assert [e.outbox_id for e in await st.outbox_list("n3")] == [ids[0], ids[2]]
            await st.outbox_delete_many([ids[0], first, ids[0], 10**12])
            assert await st.outbox_list() == [
                OutboxEntry(ids[1], "n2", b"p2", 0), OutboxEntry(ids[2], "n3", b"p3", 0)]
            await st.outbox_delete_many([])
            assert await st.outbox_put("n2", b"p4") > ids[2]

    @needs("small")
    async def test_enqueue_many_crossing_the_size_limit_answers_each(self) -> None:
        """One envelope too big for the store, in a batch of small ones: it alone is
        refused, the small ones are stored in list order."""
        async with self.opened(small=True) as st:
            small = [EnqueueRequest([(BOB, 0, b"s%02d" % n + bytes(100))], now=T0)
                     for n in range(20)]
            huge = EnqueueRequest([(BOB, 0, b"\xee" * (4 << 20))], now=T0)
            answers = await st.enqueue_many(small[:10] + [huge] + small[10:])
            assert isinstance(answers[10], StorageFull)
            assert answers[:10] + answers[11:] == [[n] for n in range(1, 21)]
            items = await st.read_queue(BOB, 0, limit=100)
            assert [i.envelope[:3] for i in items] == [b"s%02d" % n for n in range(20)]

    @needs("small")
    async def test_a_sender_refused_for_room_is_not_overtaken_in_its_batch(self) -> None:
        """One sender's big envelope does not fit, its later small ones would: they are
        skipped (``StorageFull``); another sender's small ones are stored."""
        async with self.opened(small=True) as st:
            a0, b1 = (ALICE, 0), (BOB, 1)
            huge = EnqueueRequest([(BOB, 0, b"\xee" * (4 << 20))], sender=a0, now=T0)
            mine = [EnqueueRequest([(BOB, 0, b"a%02d" % n)], sender=a0, now=T0) for n in range(3)]
            theirs = [EnqueueRequest([(BOB, 0, b"b%02d" % n)], sender=b1, now=T0) for n in range(3)]
            answers = await st.enqueue_many([mine[0], huge, mine[1], theirs[0], mine[2],
                                             theirs[1], theirs[2]])
            assert answers[0] == [1]
            assert all(isinstance(answers[i], StorageFull) for i in (1, 2, 4))
            assert [answers[i] for i in (3, 5, 6)] == [[2], [3], [4]]
            assert [i.envelope for i in await st.read_queue(BOB, 0)] == [
                b"a00", b"b00", b"b01", b"b02"]

    @needs("small")
    async def test_batch_filling_the_store_then_acks_drain_it(self) -> None:
        """A batch that crosses the capacity: every request is answered, a prefix is
        stored and the rest refused (each envelope alone); acks on the full store work."""
        async with self.opened(small=True) as st:
            users = [uid(f"fill-{n}") for n in range(4)]
            chunk = b"\x5a" * 1500
            stored: dict[str, int] = dict.fromkeys(users, 0)
            for _ in range(100):
                reqs = [EnqueueRequest([(users[n % 4], 0, chunk)], now=T0) for n in range(40)]
                answers = await st.enqueue_many(reqs)
                assert all(isinstance(a, list | StorageFull) for a in answers)
                for n, a in enumerate(answers):
                    if isinstance(a, list):
                        stored[users[n % 4]] += 1
                        assert a == [stored[users[n % 4]]]  # seqs stay contiguous
                if any(isinstance(a, StorageFull) for a in answers):
                    break
            else:
                pytest.fail("the small store never filled up")
            for user in users:
                assert await st.queue_length(user, 0) == stored[user]
            # Full: acks (and claims) still work, and free room for new envelopes.
            assert await st.ack_many([(u, 0, stored[u]) for u in users]) == [
                stored[u] for u in users]
            assert await st.enqueue([(users[0], 0, chunk)], now=T0) == [stored[users[0]] + 1]
