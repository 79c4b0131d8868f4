"""The LMDB backend: the shared conformance suite, then group commit, batch isolation,
full map, URLs and crash durability."""

import errno
import os
import struct
import sys
import textwrap
import time
from contextlib import AbstractAsyncContextManager
from functools import partial
from pathlib import Path

import lmdb
import pytest
import trio

from storage import (
    DuplicateKey,
    EnqueueRequest,
    QueueFull,
    StaleVersion,
    Storage,
    StorageFull,
    StorageUnavailable,
    open_storage,
)
from storage._group_commit import translate
from storage.lmdb import DEFAULT_MAP_SIZE, LmdbStorage, parse_size, path_from_url
from storage.testing import ALICE, BOB, StorageConformance, uid

T0 = 1_800_000_000.0
ROOT = Path(__file__).resolve().parents[2]


class TestLmdbStorage(StorageConformance):
    reopen_supported = True

    def make_storage(self) -> AbstractAsyncContextManager[Storage]:
        return LmdbStorage.from_url(f"lmdb://{self.tmp_path}/db")

    def make_small_storage(self) -> AbstractAsyncContextManager[Storage]:
        return LmdbStorage.open(self.tmp_path / "small", map_size=256 * 1024)


async def test_concurrent_enqueues_are_group_committed(tmp_path: Path) -> None:
    with trio.fail_after(10):
        async with LmdbStorage.open(tmp_path / "db") as st:
            users = [uid(i) for i in range(10)]
            batches = st.writer.batches
            async with trio.open_nursery() as nursery:
                for n in range(1000):
                    nursery.start_soon(st.enqueue, [(users[n % 10], 0, b"e%d" % n)])
            # the property is the batching (a wall-clock bound failed on a loaded machine;
            # speed lives in bench/)
            used = st.writer.batches - batches
            assert used <= 20, f"1000 concurrent enqueues took {used} transactions"
            for user in users:
                assert await st.queue_length(user, 0) == 100


async def test_domain_errors_do_not_fail_the_batch(tmp_path: Path) -> None:
    with trio.fail_after(10):
        async with LmdbStorage.open(tmp_path / "db") as st:
            await st.put_device_list(ALICE, 5, b"v5")
            await st.add_one_time_keys(ALICE, 0, [("k1", b"1")])
            await st.enqueue([(BOB, 0, b"x")] * 2, now=T0)
            outcomes: dict[str, object] = {}

            async def run(name: str, fn, *args) -> None:  # noqa: ANN001
                try:
                    outcomes[name] = await fn(*args)
                except (StaleVersion, DuplicateKey, QueueFull) as exc:
                    outcomes[name] = type(exc)

            batches = st.writer.batches
            async with trio.open_nursery() as nursery:
                nursery.start_soon(run, "stale", st.put_device_list, ALICE, 4, b"v4")
                nursery.start_soon(run, "dup", st.add_one_time_keys, ALICE, 0, [("k1", b"1")])
                nursery.start_soon(run, "full", partial(st.enqueue, max_queue=2), [(BOB, 0, b"y")])
                nursery.start_soon(run, "ok1", partial(st.enqueue, now=T0), [(ALICE, 0, b"a")])
                nursery.start_soon(run, "ok2", st.add_one_time_keys, ALICE, 0, [("k2", b"2")])
                nursery.start_soon(run, "ok3", st.put_device_list, BOB, 1, b"b1")
            assert st.writer.batches - batches <= 2  # they shared a transaction
            assert outcomes == {
                "stale": StaleVersion, "dup": DuplicateKey, "full": QueueFull,
                "ok1": [1], "ok2": 2, "ok3": None,
            }
            assert await st.get_device_list(ALICE) == (5, b"v5")
            assert await st.get_device_list(BOB) == (1, b"b1")
            assert await st.queue_length(BOB, 0) == 2


async def test_unexpected_op_error_fails_only_that_op(tmp_path: Path) -> None:
    def broken(txn, dbs):  # noqa: ANN001, ANN202
        txn.put(b"half-written", b"x", db=dbs.meta)
        raise RuntimeError("bug")

    with trio.fail_after(10):
        async with LmdbStorage.open(tmp_path / "db") as st:
            results: list[object] = []

            async def bad() -> None:
                with pytest.raises(RuntimeError, match="bug"):
                    await st.writer.submit(broken)

            async def good(n: int) -> None:
                results.append(await st.enqueue([(ALICE, 0, b"%d" % n)], now=T0))

            async with trio.open_nursery() as nursery:
                for n in range(5):
                    nursery.start_soon(good, n)
                nursery.start_soon(bad)
            assert sorted(r[0] for r in results) == [1, 2, 3, 4, 5]  # type: ignore[index]
            assert st._read(lambda txn: txn.get(b"half-written", db=st._dbs.meta)) is None


async def test_full_map_refuses_big_enqueues_alone_and_frees_still_work(tmp_path: Path) -> None:
    """Concurrent 100 kB enqueues into a 256 KiB map, with an ack and a claim in the
    same batches: each enqueue is answered alone, the freeing ops succeed."""
    with trio.fail_after(10):
        async with LmdbStorage.open(tmp_path / "db", map_size=256 * 1024) as st:
            await st.enqueue([(ALICE, 0, b"a" * 1000)] * 8, now=T0)
            await st.add_one_time_keys(ALICE, 0, [("k1", b"1")])
            errors: list[type] = []
            freed: list[object] = []

            async def grow(n: int) -> None:
                try:
                    await st.enqueue([(BOB, n, b"b" * 100_000)], now=T0)
                except StorageFull:
                    errors.append(StorageFull)

            async def free() -> None:
                freed.append(await st.ack(ALICE, 0, 4))
                freed.append(await st.claim_key(ALICE, 0))

            async with trio.open_nursery() as nursery:
                for n in range(6):  # 600 kB: cannot all fit in a 256 KiB map
                    nursery.start_soon(grow, n)
                nursery.start_soon(free)
            assert errors, "some enqueues must have found the map full"
            assert freed == [4, ("k1", b"1", False)]
            stored = sum([await st.queue_length(BOB, n) for n in range(6)])
            assert stored + len(errors) == 6
            assert [i.seq for i in await st.read_queue(ALICE, 0)] == [5, 6, 7, 8]
            assert await st.enqueue([(ALICE, 0, b"small")], now=T0) == [9]


def test_full_disk_errors_translate_to_storage_full() -> None:
    assert isinstance(translate(lmdb.MapFullError("mdb_put", -30792)), StorageFull)
    assert isinstance(translate(lmdb.DiskError("mdb_txn_commit", errno.ENOSPC)), StorageFull)
    assert isinstance(translate(lmdb.Error("mdb_txn_commit", errno.EDQUOT)), StorageFull)
    other = translate(lmdb.Error("mdb_txn_commit", errno.EIO))
    assert type(other) is StorageUnavailable and isinstance(other.__cause__, lmdb.Error)


async def test_aclose_flushes_and_then_refuses(tmp_path: Path) -> None:
    with trio.fail_after(10):
        async with LmdbStorage.open(tmp_path / "db") as st:
            async with trio.open_nursery() as nursery:
                for _ in range(50):
                    nursery.start_soon(st.enqueue, [(ALICE, 0, b"x")])
                await trio.testing.wait_all_tasks_blocked()
                await st.aclose()
            with pytest.raises(trio.ClosedResourceError):
                await st.enqueue([(ALICE, 0, b"late")])
            with pytest.raises(trio.ClosedResourceError):
                await st.queue_length(ALICE, 0)
        async with LmdbStorage.open(tmp_path / "db") as st:
            assert await st.queue_length(ALICE, 0) == 50


async def test_cancelled_writer_answers_every_queued_op(tmp_path: Path) -> None:
    """The commit thread's owner is cancelled with 300 enqueues queued or committing:
    each caller gets an answer (stored, or ClosedResourceError for what never ran),
    none hangs, and exactly the ones answered as stored are there after reopening."""
    answers: list[bool] = []
    with trio.fail_after(30):
        async with trio.open_nursery() as outer:
            holder: dict[str, LmdbStorage] = {}

            async def own(task_status: trio.TaskStatus[trio.CancelScope]) -> None:
                with trio.CancelScope() as scope:
                    async with LmdbStorage.open(tmp_path / "db") as st:
                        holder["st"] = st
                        task_status.started(scope)
                        await trio.sleep_forever()

            scope = await outer.start(own)

            async def one(i: int) -> None:
                try:
                    await holder["st"].enqueue([(ALICE, 0, b"%d" % i)], now=T0)
                except trio.ClosedResourceError:
                    answers.append(False)
                else:
                    answers.append(True)

            for i in range(300):
                outer.start_soon(one, i)
            await trio.testing.wait_all_tasks_blocked()
            scope.cancel()
        assert len(answers) == 300
        async with LmdbStorage.open(tmp_path / "db") as st:
            assert await st.queue_length(ALICE, 0) == sum(answers)


async def test_body_exception_is_not_wrapped_in_a_group(tmp_path: Path) -> None:
    with pytest.raises(KeyError):
        async with LmdbStorage.open(tmp_path / "db"):
            raise KeyError("mine")


async def test_urls(tmp_path: Path) -> None:
    assert path_from_url("lmdb:///var/lib/x") == ("/var/lib/x", {})
    assert path_from_url("lmdb://data/n1?map_size=1G") == ("data/n1", {"map_size": ["1G"]})
    assert path_from_url("lmdb:///a%20b") == ("/a b", {})
    with pytest.raises(ValueError):
        path_from_url("lmdb://")
    assert parse_size("1GiB") == parse_size("1g") == 1 << 30
    assert parse_size("4096") == 4096 and parse_size("512M") == 512 << 20
    with pytest.raises(ValueError):
        parse_size("lots")
    with trio.fail_after(10):
        async with open_storage(f"lmdb://{tmp_path}/u?map_size=8M") as st:
            assert isinstance(st, LmdbStorage) and st.map_size == 8 << 20
        async with open_storage(f"lmdb://{tmp_path}/v") as st:
            assert isinstance(st, LmdbStorage) and st.map_size == DEFAULT_MAP_SIZE
        with pytest.raises(ValueError, match="unknown"):
            async with open_storage(f"lmdb://{tmp_path}/u?sync=0"):
                pass


async def test_acknowledged_writes_survive_sigkill(tmp_path: Path) -> None:
    child = textwrap.dedent(f"""
        import os, signal, sys, trio
        from storage.lmdb import LmdbStorage
        async def main():
            async with LmdbStorage.open({str(tmp_path / "db")!r}) as st:
                async with trio.open_nursery() as nursery:
                    for n in range(200):
                        nursery.start_soon(st.enqueue, [({ALICE!r}, 0, b"m%d" % n)])
                await st.outbox_put("n2", b"fwd")
                print("acked", flush=True)
                os.kill(os.getpid(), signal.SIGKILL)
        trio.run(main)
    """)
    with trio.fail_after(20):
        proc = await trio.run_process(
            [sys.executable, "-c", child], capture_stdout=True, check=False, cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
    assert proc.stdout == b"acked\n" and proc.returncode == -9
    with trio.fail_after(10):
        async with LmdbStorage.open(tmp_path / "db") as st:
            items = await st.read_queue(ALICE, 0, limit=1000)
            assert sorted(i.envelope for i in items) == sorted(b"m%d" % n for n in range(200))
            assert [i.seq for i in items] == list(range(1, 201))
            assert [e.payload for e in await st.outbox_list()] == [b"fwd"]


async def test_outbox_lists_per_destination_through_its_index(tmp_path: Path) -> None:
    with trio.fail_after(20):
        async with LmdbStorage.open(tmp_path / "db") as st:
            ids = {d: [await st.outbox_put(d, f"{d}-{i}".encode()) for i in range(3)]
                   for d in ("n1", "n10", "n2")}  # "n1" is a prefix of "n10"
            await st.outbox_delete(ids["n10"][1])
            await st.outbox_retry(ids["n1"][0])
            got = {d: [(e.outbox_id, e.payload, e.attempts) for e in await st.outbox_list(d)]
                   for d in ("n1", "n10", "n2", "n3")}
            assert got == {
                "n1": [(ids["n1"][0], b"n1-0", 1), (ids["n1"][1], b"n1-1", 0),
                       (ids["n1"][2], b"n1-2", 0)],
                "n10": [(ids["n10"][0], b"n10-0", 0), (ids["n10"][2], b"n10-2", 0)],
                "n2": [(i, f"n2-{k}".encode(), 0) for k, i in enumerate(ids["n2"])],
                "n3": [],
            }
            assert [e.outbox_id for e in await st.outbox_list("n2", limit=2)] == ids["n2"][:2]
            assert len(await st.outbox_list(None)) == 8


async def test_outbox_index_is_built_for_an_older_environment(tmp_path: Path) -> None:
    path = tmp_path / "db"
    with trio.fail_after(20):
        async with LmdbStorage.open(path) as st:
            a = await st.outbox_put("n2", b"a")
            b = await st.outbox_put("n3", b"b")
        # Make it look like an environment written before the index existed.
        env = lmdb.open(str(path), max_dbs=32)
        with env.begin(write=True) as txn:
            txn.drop(env.open_db(b"outbox_dest", txn=txn), delete=True)
            txn.delete(b"outbox_indexed", db=env.open_db(b"meta", txn=txn))
        env.close()
        async with LmdbStorage.open(path) as st:
            assert [e.outbox_id for e in await st.outbox_list("n2")] == [a]
            assert [e.outbox_id for e in await st.outbox_list("n3")] == [b]
            await st.outbox_delete(a)
            assert await st.outbox_list("n2") == []


async def test_a_store_written_before_byte_accounting_is_counted_at_open(tmp_path: Path) -> None:
    """Issue 11: a store from before ``queue_bytes`` (24-byte device records, no
    ``accounts``) gets its queue bytes counted once when opened."""
    from storage import _lmdb_layout as L

    with trio.fail_after(20):
        async with LmdbStorage.open(tmp_path) as st:
            await st.enqueue([(ALICE, 0, b"a" * 10), (ALICE, 1, b"b" * 20), (BOB, 0, b"c")])
        env = lmdb.open(str(tmp_path), max_dbs=len(L.DB_NAMES) + 2, subdir=True)
        with env.begin(write=True) as txn:  # turn it back into the old layout
            dbs = L.Dbs(**{n: env.open_db(n.encode(), txn=txn) for n in L.DB_NAMES})
            for user, dev in ((ALICE, 0), (ALICE, 1), (BOB, 0)):
                devk = L.dev_key(user.encode(), dev)
                rec = L.DevRec.load(txn, dbs, devk)
                txn.put(devk, struct.pack(">QQQ", rec.last_seq, rec.queue_len, rec.otk_count),
                        db=dbs.devices)
            txn.drop(dbs.accounts, delete=False)
            txn.delete(L.BYTES_INDEXED, db=dbs.meta)
        env.close()
        async with LmdbStorage.open(tmp_path) as st:
            assert [await st.queue_bytes(ALICE, 0), await st.queue_bytes(ALICE),
                    await st.queue_bytes(BOB)] == [10, 30, 1]
            assert await st.ack(ALICE, 1, 1) == 1
            assert await st.queue_bytes(ALICE) == 10


async def test_charge_tags_kept_in_qcharge_move_into_the_expiry_index_at_open(
    tmp_path: Path,
) -> None:
    """Issue 11: a store whose items' charge tags are ``qcharge`` records (the first
    layout) gets them moved into their ``expiry`` entries at open; acks and expiry
    then still take the bytes off the tags."""
    from storage import _lmdb_layout as L

    with trio.fail_after(20):
        async with LmdbStorage.open(tmp_path) as st:
            await st.enqueue_many([
                EnqueueRequest([(ALICE, 0, b"a" * 10)], charges=("u:bob", "x:strangers")),
                EnqueueRequest([(ALICE, 0, b"b" * 20)], charges=("u:bob",), now=1.0),
            ])
        env = lmdb.open(str(tmp_path), max_dbs=len(L.DB_NAMES) + 2, subdir=True)
        with env.begin(write=True) as txn:  # turn it back into the first layout
            dbs = L.Dbs(**{n: env.open_db(n.encode(), txn=txn) for n in L.DB_NAMES})
            moved = 0
            with txn.cursor(db=dbs.expiry) as cur:
                for key, tags in cur:
                    if key[8:9] == b"q" and tags:
                        txn.put(key[9:], tags, db=dbs.qcharge)
                        txn.put(key, b"", db=dbs.expiry)
                        moved += 1
            assert moved == 2
        env.close()
        async with LmdbStorage.open(tmp_path) as st:
            assert [await st.charged_bytes("u:bob"), await st.charged_bytes("x:strangers"),
                    await st.charged_bytes("u:bob", ALICE, 0)] == [30, 10, 30]
            assert await st.expire(2.0) == 1  # the item of 1.0
            assert await st.charged_bytes("u:bob") == 10
            assert await st.ack(ALICE, 0, 1) == 1
            assert [await st.charged_bytes("u:bob"), await st.charged_bytes("x:strangers"),
                    await st.queue_bytes(ALICE)] == [0, 0, 0]
        env = lmdb.open(str(tmp_path), max_dbs=len(L.DB_NAMES) + 2, subdir=True)
        with env.begin() as txn:
            assert txn.stat(env.open_db(b"qcharge", txn=txn))["entries"] == 0
        env.close()


async def test_watchers_of_an_old_store_are_indexed_once_at_open(tmp_path: Path) -> None:
    carol = uid("carol")
    with trio.fail_after(20):
        async with LmdbStorage.open(tmp_path / "db") as st:
            await st.add_watcher(BOB, carol, ts=5.0)  # a pair with a time: kept as it is
            with st._env.begin(write=True) as txn:  # the layout before watcher times
                for w in (BOB, carol):
                    txn.put(ALICE.encode() + b"|" + w.encode(), b"", db=st._dbs.watchers)
                txn.delete(b"watch_indexed", db=st._dbs.meta)
        before = time.time()
        async with LmdbStorage.open(tmp_path / "db") as st:
            assert await st.watchers(ALICE) == sorted([BOB, carol])
            assert await st.watching_count(carol) == 2 and await st.watching_count(BOB) == 1
            assert await st.expire_watchers(before) == 1  # only the timed pair is older
            assert await st.watchers(BOB) == []
            # the old pairs were refreshed at open: a newer watcher drops one of them
            added = await st.add_watcher(ALICE, uid("dave"), max_watchers=2)
            assert added.recorded and added.evicted == min(BOB, carol)
        async with LmdbStorage.open(tmp_path / "db") as st:  # indexed once: nothing redone
            assert await st.watchers(ALICE) == sorted([max(BOB, carol), uid("dave")])
            assert await st.watching_count(carol) == (1 if carol > BOB else 0)


async def test_old_watchers_that_do_not_fit_the_indexes_are_dropped_at_open(
        tmp_path: Path) -> None:
    path, size = tmp_path / "db", 1 << 20
    with trio.fail_after(20):
        async with LmdbStorage.open(path, map_size=size) as st:
            with st._env.begin(write=True) as txn:  # the layout before watcher times
                for i in range(3000):
                    txn.put(ALICE.encode() + b"|" + uid(f"w{i}").encode(), b"",
                            db=st._dbs.watchers)
                txn.delete(b"watch_indexed", db=st._dbs.meta)
        async with LmdbStorage.open(path, map_size=size) as st:  # opens all the same
            assert await st.watchers(ALICE) == []
            assert (await st.add_watcher(ALICE, BOB)).recorded
            assert await st.watchers(ALICE) == [BOB]
