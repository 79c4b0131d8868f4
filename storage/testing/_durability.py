"""Conformance: outbox, lifecycle, durability across reopen, full storage."""

from __future__ import annotations

import pytest

from ..base import OutboxEntry
from ..errors import DuplicateKey, StorageFull
from ._base import ALICE, BOB, ConformanceBase, needs

T0 = 1_800_000_000.0


class OutboxConformance(ConformanceBase):
    """Outbox order, retries, deletes; aclose."""

    async def test_outbox_fifo_filter_limit(self) -> None:
        async with self.opened() as st:
            ids = [await st.outbox_put(dest, b"p%d" % i) for i, dest in
                   enumerate(["n2", "n3", "n2", "n2"])]
            assert ids == sorted(ids) and len(set(ids)) == 4
            assert await st.outbox_list() == [
                OutboxEntry(ids[0], "n2", b"p0", 0), OutboxEntry(ids[1], "n3", b"p1", 0),
                OutboxEntry(ids[2], "n2", b"p2", 0), OutboxEntry(ids[3], "n2", b"p3", 0),
            ]
            assert [e.outbox_id for e in await st.outbox_list("n2")] == [ids[0], ids[2], ids[3]]
            assert [e.outbox_id for e in await st.outbox_list("n2", limit=2)] == ids[0:3:2]
            assert await st.outbox_list("n9") == []

    async def test_outbox_retry_and_delete(self) -> None:
        async with self.opened() as st:
            a = await st.outbox_put("n2", b"a")
            b = await st.outbox_put("n2", b"b")
            await st.outbox_retry(a)
            await st.outbox_retry(a)
            assert [(e.outbox_id, e.attempts) for e in await st.outbox_list()] == [(a, 2), (b, 0)]
            await st.outbox_delete(a)
            await st.outbox_delete(a)  # no-op
            await st.outbox_retry(a)  # no-op
            assert await st.outbox_list() == [OutboxEntry(b, "n2", b"b", 0)]
            c = await st.outbox_put("n2", b"c")
            assert c > b  # ids are not reused
            await st.outbox_delete(b)
            await st.outbox_delete(c)
            assert await st.outbox_list() == []
            assert await st.outbox_put("n2", b"d") > c

    async def test_aclose_is_idempotent(self) -> None:
        async with self.opened() as st:
            await st.enqueue([(ALICE, 0, b"x")], now=T0)
            await st.aclose()
            await st.aclose()


class DurabilityConformance(ConformanceBase):
    """Everything survives close and reopen (persistent backends only); full storage."""

    @needs("reopen")
    async def test_everything_survives_reopen(self) -> None:
        async with self.opened() as st:
            await st.put_device_list(ALICE, 2, b"list")
            await st.add_one_time_keys(ALICE, 0, [("k1", b"one"), ("k2", b"two")])
            assert await st.claim_key(ALICE, 0) is not None
            await st.set_fallback_key(ALICE, 0, "fb", b"fallback")
            await st.enqueue([(ALICE, 0, b"e1"), (BOB, 3, b"e2")], dedupe=b"m1", now=T0)
            await st.enqueue([(ALICE, 0, b"e3")], now=T0 + 1)
            oid = await st.outbox_put("n2", b"fwd")
            await st.outbox_retry(oid)
        async with self.opened() as st:
            assert await st.get_device_list(ALICE) == (2, b"list")
            assert await st.count_one_time_keys(ALICE, 0) == 1
            claimed = await st.claim_key(ALICE, 0)
            assert claimed is not None and claimed[0] in ("k1", "k2") and not claimed[2]
            with pytest.raises(DuplicateKey):
                await st.add_one_time_keys(ALICE, 0, [("k1", b"one")])
            assert await st.claim_key(ALICE, 0) == ("fb", b"fallback", True)
            assert [(i.seq, i.ts, i.envelope) for i in await st.read_queue(ALICE, 0)] == [
                (1, T0, b"e1"), (2, T0 + 1, b"e3"),
            ]
            assert await st.enqueue([(ALICE, 0, b"dup")], dedupe=b"m1", now=T0) is None
            assert await st.outbox_list() == [OutboxEntry(oid, "n2", b"fwd", 1)]
            assert await st.outbox_put("n2", b"next") > oid

    @needs("reopen")
    async def test_seq_not_reused_after_ack_purge_and_reopen(self) -> None:
        async with self.opened() as st:
            await st.enqueue([(ALICE, 0, b"e")] * 3 + [(BOB, 0, b"e")] * 2, now=T0)
            assert await st.ack(ALICE, 0, 3) == 3
            assert await st.purge_device(BOB, 0) == 2
        async with self.opened() as st:
            assert await st.enqueue([(ALICE, 0, b"e"), (BOB, 0, b"e")], now=T0) == [4, 3]

    @needs("small")
    async def test_storage_full_stores_nothing_and_recovers(self) -> None:
        async with self.opened(small=True) as st:
            await st.put_device_list(ALICE, 1, b"list")
            await st.add_one_time_keys(ALICE, 0, [("k1", b"x" * 32)])
            chunk = b"\xab" * 4096
            stored = 0
            with pytest.raises(StorageFull):
                for _ in range(100_000):
                    await st.enqueue([(BOB, 0, chunk)] * 4, now=T0)
                    stored += 4
            assert stored > 0
            # Nothing of the failed call; everything before intact.
            assert await st.queue_length(BOB, 0) == stored
            items = await st.read_queue(BOB, 0, limit=stored + 10)
            assert [i.seq for i in items] == list(range(1, stored + 1))
            assert all(i.envelope == chunk for i in items)
            assert await st.get_device_list(ALICE) == (1, b"list")
            with pytest.raises(StorageFull):
                await st.outbox_put("n2", b"\xcd" * 200_000)
            # Deleting calls still work while full, and free room for new writes.
            assert await st.claim_key(ALICE, 0) == ("k1", b"x" * 32, False)
            assert await st.ack(BOB, 0, stored) == stored
            assert await st.enqueue([(BOB, 0, chunk)] * 4, now=T0) == [
                stored + 1, stored + 2, stored + 3, stored + 4,
            ]
