"""LMDB: per-queue share counts are kept only while a queue may reach a share bound
(storage/_lmdb_layout.py, ``shares_counted``), and the bounds stay exact."""

import struct
from pathlib import Path

import lmdb
import trio

from storage import EnqueueRequest, QueueFull, QueueQuota
from storage import _lmdb_layout as L
from storage.lmdb import LmdbStorage
from storage.testing import ALICE, BOB

QUOTA = QueueQuota(share_bytes=100)


async def _share_records(st: LmdbStorage) -> dict[bytes, int]:
    def read(txn: lmdb.Transaction) -> dict[bytes, int]:
        with txn.cursor(db=st._dbs.shares) as cur:
            return {k: L.unpack_u64(v) for k, v in cur}
    return await st._reading(read)


async def _counted(st: LmdbStorage, user: str) -> bool:
    devk = L.dev_key(user.encode(), 0)
    return await st._reading(lambda txn: L.DevRec.load(txn, st._dbs, devk).shares_counted)


def _req(size: int, tag: str, quota: QueueQuota | None = QUOTA) -> EnqueueRequest:
    return EnqueueRequest([(ALICE, 0, b"x" * size)], charges=(tag,), quota=quota)


async def test_small_queues_write_no_share_records(tmp_path: Path) -> None:
    with trio.fail_after(20):
        async with LmdbStorage.open(tmp_path) as st:
            for _ in range(5):  # an online device: a few messages, then an ack
                assert all(isinstance(a, list) for a in
                           await st.enqueue_many([_req(10, "u:bob"), _req(10, "u:carol")]))
                assert await _share_records(st) == {}
                assert await st.charged_bytes("u:bob", ALICE, 0) == 10  # counted on demand
                assert await st.charged_bytes("u:bob") == 10
                await st.ack(ALICE, 0, 2**40)
                assert await st.charged_bytes("u:bob") == 0


async def test_counting_starts_before_a_share_bound_can_be_crossed(tmp_path: Path) -> None:
    with trio.fail_after(20):
        async with LmdbStorage.open(tmp_path) as st:
            # 60 bytes of "s" queued without a quota (nothing counted), then in one
            # batch: 30 more of "s" (90: under the bound), 20 more (110: refused)
            assert await st.enqueue_many([_req(60, "s", None)]) == [[1]]
            assert not await _counted(st, ALICE)
            answers = await st.enqueue_many([_req(30, "s"), _req(20, "s"), _req(40, "t")])
            assert answers[0] == [2]
            assert isinstance(answers[1], QueueFull) and answers[1].quota == "share_bytes"
            assert answers[2] == [3]  # another tag's share is its own
            assert await _counted(st, ALICE)
            devk = L.dev_key(ALICE.encode(), 0)
            assert await _share_records(st) == {devk + b"s": 90, devk + b"t": 40}
            assert await st.charged_bytes("s", ALICE, 0) == 90
            await st.ack(ALICE, 0, 1)  # 30 of "s" left, still counted
            assert await _share_records(st) == {devk + b"s": 30, devk + b"t": 40}
            assert await _counted(st, ALICE)
            await st.ack(ALICE, 0, 3)  # empty: no longer counted, no records left
            assert await _share_records(st) == {}
            assert not await _counted(st, ALICE)


async def test_stale_counts_are_replaced_when_counting_starts(tmp_path: Path) -> None:
    with trio.fail_after(20):
        async with LmdbStorage.open(tmp_path) as st:
            assert await st.enqueue_many([_req(60, "s", None)]) == [[1]]
        env = lmdb.open(str(tmp_path), max_dbs=len(L.DB_NAMES) + 2, subdir=True)
        devk = L.dev_key(ALICE.encode(), 0)
        with env.begin(write=True) as txn:  # a wrong count left in an uncounted queue
            txn.put(devk + b"s", L.pack_u64(1000), db=env.open_db(b"shares", txn=txn))
        env.close()
        async with LmdbStorage.open(tmp_path) as st:
            assert (await st.enqueue_many([_req(50, "t")]))[0] == [2]  # 110 > 100: counted
            assert await _share_records(st) == {devk + b"s": 60, devk + b"t": 50}


async def test_a_record_of_the_older_layout_reads_as_counted(tmp_path: Path) -> None:
    with trio.fail_after(20):
        async with LmdbStorage.open(tmp_path) as st:
            assert await st.enqueue_many([_req(60, "s", None)]) == [[1]]
        env = lmdb.open(str(tmp_path), max_dbs=len(L.DB_NAMES) + 2, subdir=True)
        devk = L.dev_key(ALICE.encode(), 0)
        with env.begin(write=True) as txn:  # as the older layout wrote it: counted
            txn.put(devk, struct.pack(">QQQQ", 1, 1, 0, 60), db=env.open_db(b"devices", txn=txn))
            txn.put(devk + b"s", L.pack_u64(60), db=env.open_db(b"shares", txn=txn))
        env.close()
        async with LmdbStorage.open(tmp_path) as st:
            assert await _counted(st, ALICE)
            answers = await st.enqueue_many([_req(41, "s"), _req(40, "s")])
            assert isinstance(answers[0], QueueFull) and answers[1] == [2]
            assert await st.charged_bytes("s", ALICE, 0) == 100
            await st.ack(ALICE, 0, 2)
            assert await _share_records(st) == {} and not await _counted(st, ALICE)


async def test_deleting_a_user_clears_its_counted_shares(tmp_path: Path) -> None:
    with trio.fail_after(20):
        async with LmdbStorage.open(tmp_path) as st:
            exempt = QueueQuota(share_bytes=100, share_exempt=frozenset({BOB}))
            big = EnqueueRequest([(BOB, 0, b"x" * 90)], charges=("s",), quota=exempt)
            assert await st.enqueue_many([big, big]) == [[1], [2]]  # 180 > 100: counted
            assert await _counted(st, BOB)
            await st.delete_user(BOB)
            assert await _share_records(st) == {} and await st.charged_bytes("s") == 0
