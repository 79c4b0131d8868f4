"""Conformance: device lists (version CAS), one-time keys and fallback keys."""

from __future__ import annotations

import random

import pytest
import trio

from ..base import Storage
from ..errors import DuplicateKey, StaleVersion
from ._base import ALICE, BOB, ConformanceBase


def _keys(prefix: str, n: int) -> list[tuple[str, bytes]]:
    return [(f"{prefix}{i:05d}", f"pub-{prefix}-{i}".encode() + bytes(24)) for i in range(n)]


class DirectoryConformance(ConformanceBase):

    async def test_get_fallback_key_reads_without_claiming(self) -> None:
        async with self.opened() as st:
            assert await st.get_fallback_key(ALICE, 0) is None
            await st.set_fallback_key(ALICE, 0, "fb1", b"F" * 32)
            await st.add_one_time_keys(ALICE, 0, [("k1", b"K" * 32)])
            assert await st.get_fallback_key(ALICE, 0) == ("fb1", b"F" * 32)
            assert await st.count_one_time_keys(ALICE, 0) == 1  # nothing claimed
            await st.set_fallback_key(ALICE, 0, "fb2", b"G" * 32)
            assert await st.get_fallback_key(ALICE, 0) == ("fb2", b"G" * 32)
    """Device lists and keys."""

    # -- device lists

    async def test_is_a_storage(self) -> None:
        async with self.opened() as st:
            assert isinstance(st, Storage)

    async def test_device_list_absent(self) -> None:
        async with self.opened() as st:
            assert await st.get_device_list(ALICE) is None

    async def test_device_list_put_get_and_grow(self) -> None:
        async with self.opened() as st:
            await st.put_device_list(ALICE, 1, b"list-v1\x00")
            assert await st.get_device_list(ALICE) == (1, b"list-v1\x00")
            await st.put_device_list(ALICE, 5, b"list-v5")
            assert await st.get_device_list(ALICE) == (5, b"list-v5")
            assert await st.get_device_list(BOB) is None

    async def test_device_list_stale_version_rejected(self) -> None:
        async with self.opened() as st:
            await st.put_device_list(ALICE, 3, b"v3")
            with pytest.raises(StaleVersion):
                await st.put_device_list(ALICE, 3, b"v3-other")
            with pytest.raises(StaleVersion):
                await st.put_device_list(ALICE, 2, b"v2")
            assert await st.get_device_list(ALICE) == (3, b"v3")

    async def test_device_list_concurrent_cas(self) -> None:
        versions = list(range(1, 51))
        random.Random(7).shuffle(versions)
        outcomes: dict[int, str] = {}
        async with self.opened() as st:

            async def put(v: int) -> None:
                try:
                    await st.put_device_list(ALICE, v, f"v{v}".encode())
                    outcomes[v] = "ok"
                except StaleVersion:
                    outcomes[v] = "stale"

            async with trio.open_nursery() as nursery:
                for v in versions:
                    nursery.start_soon(put, v)
            assert await st.get_device_list(ALICE) == (50, b"v50")
            assert outcomes[50] == "ok" and len(outcomes) == 50

    # -- one-time keys

    async def test_add_and_count_keys(self) -> None:
        async with self.opened() as st:
            assert await st.count_one_time_keys(ALICE, 0) == 0
            assert await st.add_one_time_keys(ALICE, 0, _keys("a", 10)) == 10
            assert await st.add_one_time_keys(ALICE, 0, _keys("b", 5)) == 15
            assert await st.count_one_time_keys(ALICE, 0) == 15
            assert await st.count_one_time_keys(ALICE, 1) == 0
            assert await st.count_one_time_keys(BOB, 0) == 0

    async def test_duplicate_key_in_same_call(self) -> None:
        async with self.opened() as st:
            keys = [*_keys("a", 3), ("a00001", b"again")]
            with pytest.raises(DuplicateKey):
                await st.add_one_time_keys(ALICE, 0, keys)
            assert await st.count_one_time_keys(ALICE, 0) == 0

    async def test_duplicate_key_already_stored(self) -> None:
        async with self.opened() as st:
            await st.add_one_time_keys(ALICE, 0, _keys("a", 3))
            with pytest.raises(DuplicateKey):
                await st.add_one_time_keys(ALICE, 0, [("new1", b"n1"), ("a00002", b"x")])
            assert await st.count_one_time_keys(ALICE, 0) == 3
            # The same ids are fine for another device and another user.
            assert await st.add_one_time_keys(ALICE, 1, _keys("a", 3)) == 3
            assert await st.add_one_time_keys(BOB, 0, _keys("a", 3)) == 3

    async def test_duplicate_key_already_claimed(self) -> None:
        async with self.opened() as st:
            await st.add_one_time_keys(ALICE, 0, [("k1", b"one")])
            assert await st.claim_key(ALICE, 0) == ("k1", b"one", False)
            with pytest.raises(DuplicateKey):
                await st.add_one_time_keys(ALICE, 0, [("k2", b"two"), ("k1", b"one")])
            assert await st.count_one_time_keys(ALICE, 0) == 0

    async def test_claim_each_key_once_then_none(self) -> None:
        async with self.opened() as st:
            keys = dict(_keys("a", 5))
            await st.add_one_time_keys(ALICE, 0, list(keys.items()))
            got = {}
            for left in range(4, -1, -1):
                claimed = await st.claim_key(ALICE, 0)
                assert claimed is not None
                key_id, key, is_fallback = claimed
                assert not is_fallback and key_id not in got
                got[key_id] = key
                assert await st.count_one_time_keys(ALICE, 0) == left
            assert got == keys
            assert await st.claim_key(ALICE, 0) is None
            assert await st.claim_key(BOB, 0) is None

    async def test_fallback_when_empty_not_deleted(self) -> None:
        async with self.opened() as st:
            await st.set_fallback_key(ALICE, 0, "fb1", b"fallback-1")
            await st.add_one_time_keys(ALICE, 0, [("k1", b"one")])
            assert await st.claim_key(ALICE, 0) == ("k1", b"one", False)
            for _ in range(3):
                assert await st.claim_key(ALICE, 0) == ("fb1", b"fallback-1", True)
            await st.set_fallback_key(ALICE, 0, "fb2", b"fallback-2")
            assert await st.claim_key(ALICE, 0) == ("fb2", b"fallback-2", True)
            assert await st.count_one_time_keys(ALICE, 0) == 0
            assert await st.claim_key(ALICE, 1) is None

    async def test_concurrent_claims_at_most_once(self) -> None:
        async with self.opened() as st:
            keys = dict(_keys("c", 150))
            await st.add_one_time_keys(ALICE, 0, list(keys.items()))
            await st.set_fallback_key(ALICE, 0, "fb", b"fallback")
            results: list[tuple[str, bytes, bool] | None] = []

            async def claim() -> None:
                results.append(await st.claim_key(ALICE, 0))

            async with trio.open_nursery() as nursery:
                for _ in range(200):
                    nursery.start_soon(claim)
            one_time = [r for r in results if r is not None and not r[2]]
            fallback = [r for r in results if r is not None and r[2]]
            assert len(results) == 200
            assert len(one_time) == 150
            assert {r[0]: r[1] for r in one_time} == keys  # every key exactly once
            assert fallback == [("fb", b"fallback", True)] * 50
            assert await st.count_one_time_keys(ALICE, 0) == 0

    async def test_purge_device_drops_keys(self) -> None:
        async with self.opened() as st:
            await st.add_one_time_keys(ALICE, 0, _keys("a", 4))
            await st.add_one_time_keys(ALICE, 1, _keys("a", 2))
            await st.set_fallback_key(ALICE, 0, "fb", b"f")
            assert (await st.claim_key(ALICE, 0)) is not None
            assert await st.purge_device(ALICE, 0) == 0
            assert await st.count_one_time_keys(ALICE, 0) == 0
            assert await st.claim_key(ALICE, 0) is None
            assert await st.count_one_time_keys(ALICE, 1) == 2
            # A purged device id may be reused by a new device with fresh key ids.
            assert await st.add_one_time_keys(ALICE, 0, _keys("a", 4)) == 4
