"""Conformance: device-list watchers (``add_watcher`` / ``watchers``)."""

from __future__ import annotations

import pytest
import trio

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
                assert await st.add_watcher(ALICE, w) is None
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
