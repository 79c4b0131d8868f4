"""Conformance: device-list watchers (``add_watcher`` / ``watchers``), their refresh
times and bounds (``max_watchers``: the least recently refreshed is dropped;
``max_watching``: a new pair is refused), ``expire_watchers`` and the handoff of times."""

from __future__ import annotations

from functools import partial

import pytest
import trio

from ..base import WatchAdded
from ..errors import StorageFull
from ._base import ALICE, BOB, ConformanceBase, needs, uid


class WatcherConformance(ConformanceBase):
    """Who fetched whose device list: idempotent, per user, durable."""

    async def test_watchers_absent(self) -> None:
        async with self.opened() as st:
            assert await st.watchers(ALICE) == []

    async def test_add_watcher_idempotent_sorted_per_user(self) -> None:
        async with self.opened() as st:
            carol, dave = uid("carol"), uid("dave")
            for w in (dave, BOB, carol, BOB, dave):
                assert await st.add_watcher(ALICE, w) == WatchAdded(True)
            assert await st.watchers(ALICE) == sorted({BOB, carol, dave})
            await st.add_watcher(BOB, ALICE)
            assert await st.watchers(BOB) == [ALICE]
            assert await st.watchers(carol) == []
            # a user id that is a prefix of another stays apart
            assert await st.watchers(ALICE[:-1]) == []

    async def test_concurrent_add_watcher(self) -> None:
        async with self.opened() as st:
            users = [uid(i) for i in range(50)]
            async with trio.open_nursery() as nursery:
                for w in users * 2:
                    nursery.start_soon(st.add_watcher, ALICE, w)
            assert await st.watchers(ALICE) == sorted(users)

    async def test_purge_device_keeps_watchers(self) -> None:
        async with self.opened() as st:
            await st.add_watcher(ALICE, BOB)
            await st.purge_device(ALICE, 0)
            await st.purge_device(BOB, 0)
            assert await st.watchers(ALICE) == [BOB]

    @needs("reopen")
    async def test_watchers_survive_reopen(self) -> None:
        async with self.opened() as st:
            await st.add_watcher(ALICE, BOB)
            await st.add_watcher(BOB, ALICE)
        async with self.opened() as st:
            assert await st.watchers(ALICE) == [BOB]
            await st.add_watcher(ALICE, BOB)
            assert await st.watchers(ALICE) == [BOB]
            assert await st.watchers(BOB) == [ALICE]

    @needs("small")
    async def test_add_watcher_storage_full_stores_nothing(self) -> None:
        async with self.opened(small=True) as st:
            await st.add_watcher(ALICE, BOB)
            with pytest.raises(StorageFull):
                for _ in range(100_000):
                    await st.enqueue([(BOB, 0, b"\xab" * 4096)] * 4)
            i = 0
            with pytest.raises(StorageFull):
                for i in range(100_000):  # noqa: B007 - i names the refused call
                    await st.add_watcher(uid(f"w{i}"), uid(f"x{i}"))
            assert await st.watchers(uid(f"w{i}")) == []
            assert await st.watchers(ALICE) == [BOB]

    async def test_max_watchers_drops_least_recently_refreshed(self) -> None:
        async with self.opened() as st:
            w = [uid(f"w{i}") for i in range(6)]
            for i, ts in ((0, 10.0), (1, 20.0), (2, 30.0)):
                assert await st.add_watcher(ALICE, w[i], ts=ts, max_watchers=3) == WatchAdded(True)
            assert await st.add_watcher(ALICE, w[0], ts=40.0, max_watchers=3) == WatchAdded(True)
            # an older time never lowers a refresh
            assert await st.add_watcher(ALICE, w[2], ts=5.0, max_watchers=3) == WatchAdded(True)
            assert await st.add_watcher(ALICE, w[3], ts=50.0, max_watchers=3) == WatchAdded(
                True, w[1])
            assert await st.watchers(ALICE) == sorted([w[0], w[2], w[3]])
            assert await st.add_watcher(ALICE, w[4], ts=60.0, max_watchers=3) == WatchAdded(
                True, w[2])
            assert await st.watching_count(w[1]) == 0 and await st.watching_count(w[2]) == 0
            assert await st.watching_count(w[4]) == 1
            # equal times: the lowest id goes first; other users are untouched
            await st.add_watcher(BOB, w[5], ts=1.0)
            a, b = sorted([uid("ta"), uid("tb")])
            await st.add_watcher(ALICE, b, ts=1.0, max_watchers=4)
            assert await st.add_watcher(ALICE, a, ts=1.0, max_watchers=4) == WatchAdded(True, b)
            assert (await st.add_watcher(ALICE, uid("tc"), ts=70.0, max_watchers=4)
                    == WatchAdded(True, a))
            assert await st.watchers(BOB) == [w[5]]

    async def test_max_watching_refuses_new_pairs(self) -> None:
        async with self.opened() as st:
            users = [uid(f"u{i}") for i in range(3)]
            for u in users[:2]:
                assert await st.add_watcher(u, BOB, ts=1.0, max_watching=2) == WatchAdded(True)
            assert await st.add_watcher(users[2], BOB, ts=2.0, max_watching=2) == WatchAdded(False)
            assert await st.watchers(users[2]) == []
            assert await st.watching_count(BOB) == 2
            # a stored pair is still refreshed; no bound: recorded
            assert await st.add_watcher(users[0], BOB, ts=3.0, max_watching=2) == WatchAdded(True)
            assert await st.add_watcher(users[2], BOB, ts=3.0) == WatchAdded(True)
            assert await st.watching_count(BOB) == 3
            # an eviction frees the watcher's slot
            await st.add_watcher(users[1], ALICE, ts=4.0, max_watchers=1)
            assert await st.watchers(users[1]) == [ALICE]
            assert await st.watching_count(BOB) == 2

    async def test_concurrent_add_watcher_bounded(self) -> None:
        async with self.opened() as st:
            users = [uid(i) for i in range(40)]
            async with trio.open_nursery() as nursery:
                for i, w in enumerate(users):
                    nursery.start_soon(partial(st.add_watcher, ALICE, w, ts=float(i),
                                               max_watchers=10))
            have = await st.watchers(ALICE)
            assert len(have) == 10
            assert sum([await st.watching_count(w) for w in users]) == 10
            for w in have:
                assert await st.watching_count(w) == 1

    async def test_expire_watchers(self) -> None:
        async with self.opened() as st:
            carol = uid("carol")
            await st.add_watcher(ALICE, BOB, ts=10.0)
            await st.add_watcher(ALICE, carol, ts=20.0)
            await st.add_watcher(BOB, carol, ts=30.0)
            await st.add_watcher(ALICE, BOB, ts=35.0)  # refreshed: stays
            assert await st.expire_watchers(25.0) == 1
            assert await st.watchers(ALICE) == [BOB]
            assert await st.watchers(BOB) == [carol]
            assert await st.watching_count(carol) == 1
            assert await st.expire_watchers(25.0) == 0
            assert await st.expire_watchers(1e12) == 2
            assert await st.watchers(ALICE) == [] and await st.watching_count(BOB) == 0

    async def test_watcher_times_move_with_the_user(self) -> None:
        async with self.opened() as st:
            carol = uid("carol")
            await st.add_watcher(ALICE, BOB, ts=10.0)
            await st.add_watcher(ALICE, carol, ts=20.0)
            recs = [r for r in await st.export_user(ALICE, limit=100) if r.kind == "watcher"]
            assert [(r.key, r.ts) for r in recs] == sorted([(BOB, 10.0), (carol, 20.0)])
            await st.delete_user(ALICE)
            assert await st.watching_count(BOB) == 0
            await st.import_user(ALICE, recs)
            assert await st.watchers(ALICE) == sorted([BOB, carol])
            assert await st.watching_count(carol) == 1
            assert await st.expire_watchers(15.0) == 1
            assert await st.watchers(ALICE) == [carol]

    @needs("reopen")
    async def test_watcher_times_survive_reopen(self) -> None:
        async with self.opened() as st:
            await st.add_watcher(ALICE, BOB, ts=10.0)
            await st.add_watcher(ALICE, uid("carol"), ts=20.0, max_watchers=2)
        async with self.opened() as st:
            assert await st.watching_count(BOB) == 1
            assert (await st.add_watcher(ALICE, uid("dave"), ts=30.0, max_watchers=2)
                    == WatchAdded(True, BOB))
            assert await st.expire_watchers(25.0) == 1
            assert await st.watchers(ALICE) == [uid("dave")]
