"""The LMDB backend under faults: per-op answers when a transaction fails, EIO on
commit, a map size that is a real bound, and stale reader slots of killed processes."""

from __future__ import annotations

import errno
import subprocess
import sys
from pathlib import Path

import lmdb
import pytest
import trio

from storage import EnqueueRequest, StorageFull, StorageUnavailable
from storage.lmdb import LmdbStorage
from storage.testing import ALICE, BOB, uid

T0 = 1_800_000_000.0
ROOT = Path(__file__).resolve().parents[2]


class Faults:
    """The writer's test-only fault hook: raises the planned errors at the next commits."""

    def __init__(self) -> None:
        self.plan: list[lmdb.Error] = []
        self.raised = 0

    def __call__(self, point: str) -> None:
        assert point == "commit"
        if self.plan:
            self.raised += 1
            raise self.plan.pop(0)


def eio() -> lmdb.Error:
    return lmdb.Error("mdb_txn_commit", errno.EIO)


async def test_eio_on_commit_answers_storage_unavailable_then_recovers(tmp_path: Path) -> None:
    faults = Faults()
    with trio.fail_after(10):
        async with LmdbStorage.open(tmp_path / "db", fault_hook=faults) as st:
            assert await st.enqueue([(ALICE, 0, b"first")] * 2, now=T0) == [1, 2]
            faults.plan = [eio()]
            answers = await st.enqueue_many(
                [EnqueueRequest([(ALICE, 0, b"lost-%d" % n)], now=T0) for n in range(5)])
            assert all(isinstance(a, StorageUnavailable) for a in answers), answers
            assert isinstance(answers[0].__cause__, lmdb.Error)
            assert await st.queue_length(ALICE, 0) == 2  # nothing of the failed commit
            # The next commit works, and the failed requests consumed no seq.
            assert await st.enqueue([(ALICE, 0, b"next")], now=T0) == [3]
            faults.plan = [eio(), eio()]
            with pytest.raises(StorageUnavailable):
                await st.ack(ALICE, 0, 1)
            with pytest.raises(StorageUnavailable):
                await st.put_device_list(BOB, 1, b"list")
            assert await st.get_device_list(BOB) is None
            assert await st.ack(ALICE, 0, 1) == 1
            await st.put_device_list(BOB, 1, b"list")
            assert await st.get_device_list(BOB) == (1, b"list")
            assert [i.envelope for i in await st.read_queue(ALICE, 0)] == [b"first", b"next"]
            assert faults.raised == 3


async def test_one_envelope_too_big_for_the_map_fails_alone(tmp_path: Path) -> None:
    """Past the admission check (switched off here), LMDB's own MapFull at a put
    splits the batch: the ops before commit, the big one is refused, the rest commit."""
    with trio.fail_after(10):
        async with LmdbStorage.open(tmp_path / "db", map_size=256 << 10) as st:
            st.writer.limit_bytes = 1 << 40  # let everything reach LMDB
            small = [EnqueueRequest([(BOB, 0, b"s%02d" % n)], now=T0) for n in range(20)]
            big = EnqueueRequest([(BOB, 0, bytes(1 << 20))], now=T0)
            answers = await st.enqueue_many(small[:7] + [big] + small[7:])
            assert isinstance(answers[7], StorageFull)
            assert isinstance(answers[7].__cause__, lmdb.MapFullError)
            assert answers[:7] + answers[8:] == [[n] for n in range(1, 21)]
            items = await st.read_queue(BOB, 0, limit=100)
            assert [i.envelope for i in items] == [b"s%02d" % n for n in range(20)]


async def test_map_full_at_commit_bisects_the_batch(tmp_path: Path) -> None:
    faults = Faults()
    with trio.fail_after(10):
        async with LmdbStorage.open(tmp_path / "db", fault_hook=faults) as st:
            commits = st.writer.commits
            faults.plan = [lmdb.MapFullError("mdb_txn_commit", -30792)] * 2
            answers = await st.enqueue_many(
                [EnqueueRequest([(ALICE, 0, b"%d" % n)], now=T0) for n in range(8)])
            # bump + retry, then two halves: every request stored, in order
            assert answers == [[n] for n in range(1, 9)]
            assert faults.raised == 2 and st.writer.commits - commits == 2


async def test_acks_succeed_on_a_full_map(tmp_path: Path) -> None:
    with trio.fail_after(20):
        async with LmdbStorage.open(tmp_path / "db", map_size=1 << 20) as st:
            users = [uid(f"full-{n}") for n in range(8)]
            stored = dict.fromkeys(users, 0)
            full = False
            while not full:
                answers = await st.enqueue_many(
                    [EnqueueRequest([(users[n % 8], 0, bytes(700))], now=T0) for n in range(64)])
                for n, a in enumerate(answers):
                    if isinstance(a, StorageFull):
                        full = True
                    else:
                        stored[users[n % 8]] += 1
            # The bound holds to within a page split of the last admitted op.
            assert st.writer.limit_bytes - 64 * 1024 < st.used_bytes() <= st.writer.limit_bytes + 4 * 4096
            # Every freeing op works on the full map, each in its own commit.
            for user in users:
                assert await st.ack(user, 0, 1) == 1
            assert await st.ack_many([(u, 0, stored[u]) for u in users]) == [
                stored[u] - 1 for u in users]
            assert await st.expire(T0 + 1) == 0
            assert st.map_size == 1 << 20


async def test_data_file_stays_within_map_size_over_fill_and_drain(tmp_path: Path) -> None:
    """Four fill-and-drain cycles of the same load: freed pages are reused, every
    cycle stores about as much as the first, and data.mdb never exceeds map_size."""
    map_size = 1 << 20
    data = tmp_path / "db" / "data.mdb"
    users = [uid(f"cycle-{n}") for n in range(4)]
    counts, sizes = [], []
    with trio.fail_after(30):
        async with LmdbStorage.open(tmp_path / "db", map_size=map_size) as st:
            for _ in range(4):
                stored = dict.fromkeys(users, 0)
                full = False
                while not full:
                    answers = await st.enqueue_many([
                        EnqueueRequest([(users[n % 4], 0, bytes(900))], now=T0)
                        for n in range(32)])
                    for n, a in enumerate(answers):
                        if isinstance(a, StorageFull):
                            full = True
                        else:
                            stored[users[n % 4]] += 1
                counts.append(sum(stored.values()))
                sizes.append(data.stat().st_size)
                last = {u: (await st.read_queue(u, 0, after_seq=0, limit=100_000))[-1].seq
                        for u in users}
                assert await st.ack_many([(u, 0, last[u]) for u in users]) == [
                    stored[u] for u in users]
                sizes.append(data.stat().st_size)
                assert st.map_size == map_size
    assert max(sizes) <= map_size, sizes
    assert min(counts) >= 0.9 * counts[0] and counts[0] > 500, counts
    assert sizes[-1] <= sizes[1] + 16 * 4096, sizes  # no creeping growth either


# A helper process: forks a holder (keeps the environment open, so its lock file is
# not reset; the first process to open it sizes the reader table), then N readers that each open the environment and start a read
# transaction; kills the N with SIGKILL and reports, then waits for stdin to close.
_KILLED_READERS = r"""
import os, signal, sys
import lmdb
path, n, slots = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
r, w = os.pipe()

def child(hold):
    try:
        env = lmdb.open(path, max_dbs=32, max_readers=slots)
        txn = None if hold else env.begin()
        os.write(w, b"h" if hold else b"r")
    except lmdb.ReadersFullError:
        os.write(w, b"f")
    signal.pause()

def spawn(hold):
    pid = os.fork()
    if pid == 0:
        try:
            child(hold)
        finally:
            os._exit(0)
    return pid

def read(count):
    got = b""
    while len(got) < count:
        got += os.read(r, count - len(got))
    return got

holder = spawn(True)
read(1)
pids = [spawn(False) for _ in range(n)]
got = read(n)
for pid in pids:
    os.kill(pid, signal.SIGKILL)
for pid in pids:
    os.waitpid(pid, 0)
print(f"killed {n} readers={got.count(b'r')} full={got.count(b'f')}", flush=True)
sys.stdin.read()
os.kill(holder, signal.SIGKILL)
os.waitpid(holder, 0)
"""


async def _kill_readers(path: Path, n: int, slots: int = 126) -> tuple[trio.Process, int]:
    """Start the helper; return it once its N readers are dead (holder still alive),
    with how many of them had got a reader slot."""
    proc = await trio.lowlevel.open_process(
        [sys.executable, "-c", _KILLED_READERS, str(path), str(n), str(slots)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=ROOT,
    )
    assert proc.stdout is not None
    line = b""
    while not line.endswith(b"\n"):
        chunk = await proc.stdout.receive_some(256)
        if not chunk:
            proc.kill()
            raise AssertionError(f"helper died: {line!r}")
        line += chunk
    assert line.startswith(b"killed %d readers=" % n), line
    return proc, int(line.split(b"readers=")[1].split()[0])


async def _stop(proc: trio.Process) -> None:
    assert proc.stdin is not None
    await proc.stdin.aclose()
    assert await proc.wait() == 0


async def test_node_opens_after_200_killed_readers(tmp_path: Path) -> None:
    """200 processes opened the environment and were SIGKILLed while another process
    keeps it open (so LMDB does not reset its lock file): the node opens, clears
    their slots and works."""
    path = tmp_path / "db"
    with trio.fail_after(30):
        async with LmdbStorage.open(path) as st:
            await st.enqueue([(ALICE, 0, b"before")], now=T0)
        proc, readers = await _kill_readers(path, 200)
        try:
            assert readers == 200  # the node's table has 1024 slots
            async with LmdbStorage.open(path) as st:
                assert st.writer.stale_readers_cleared == 200
                assert [i.envelope for i in await st.read_queue(ALICE, 0)] == [b"before"]
                assert await st.enqueue([(ALICE, 0, b"after")], now=T0) == [2]
        finally:
            await _stop(proc)


async def test_running_node_recovers_a_reader_table_full_of_stale_slots(tmp_path: Path) -> None:
    """A 32-slot table filled by killed processes: the node's next read clears it
    and succeeds (no periodic check in this test: interval of an hour)."""
    path = tmp_path / "db"
    with trio.fail_after(30):
        async with LmdbStorage.open(path, max_readers=32, reader_check_interval=3600) as st:
            await st.enqueue([(ALICE, 0, b"x")], now=T0)
            proc, readers = await _kill_readers(path, 64)
            try:
                assert readers >= 28  # every free slot is taken by a dead process
                assert await st.queue_length(ALICE, 0) == 1
                assert st.writer.stale_readers_cleared == readers
                assert await st.enqueue([(ALICE, 0, b"y")], now=T0) == [2]
            finally:
                await _stop(proc)


async def test_idle_node_clears_stale_readers_periodically(tmp_path: Path) -> None:
    path = tmp_path / "db"
    with trio.fail_after(30):
        async with LmdbStorage.open(path, max_readers=32, reader_check_interval=0.05) as st:
            proc, readers = await _kill_readers(path, 64)
            try:
                assert readers >= 28
                # No call on the node: its writer clears them when idle for an interval.
                while st.writer.stale_readers_cleared < readers:  # noqa: ASYNC110 (polling, fail_after bound)
                    await trio.sleep(0.01)
                assert st.writer.stale_readers_cleared == readers
            finally:
                await _stop(proc)


async def test_open_with_a_full_table_and_no_live_node_is_a_clear_refusal(
    tmp_path: Path,
) -> None:
    """py-lmdb needs a reader slot to open: with every slot stale and only a foreign
    process holding the environment, opening waits for someone to clear them, then
    fails with StorageUnavailable (not a raw LMDB error)."""
    path = tmp_path / "db"
    with trio.fail_after(30):
        async with LmdbStorage.open(path, max_readers=32):
            pass
        proc, readers = await _kill_readers(path, 64, slots=32)
        try:
            assert readers == 32  # every slot is stale (the holder keeps none)
            with pytest.raises(StorageUnavailable, match="reader table"):
                async with LmdbStorage.open(path, reader_check_interval=0.1):
                    pass
        finally:
            await _stop(proc)


async def test_an_ack_too_big_for_one_transaction_runs_in_pieces(tmp_path: Path) -> None:
    """Filling a map with small envelopes of one device and acknowledging them all in
    one ack needs more free pages than a full map has in one transaction (LMDB is
    copy-on-write); the ack still succeeds, in pieces, and frees the store."""
    with trio.fail_after(30):
        async with LmdbStorage.open(tmp_path / "db", map_size=1 << 20) as st:
            stored, n, full = 0, 0, False
            while not full:
                n += 1
                answers = await st.enqueue_many([
                    EnqueueRequest([(ALICE, 0, bytes(60))], dedupe=b"d-%d-%d" % (n, k),
                                   now=T0 + n) for k in range(64)])
                full = any(isinstance(a, StorageFull) for a in answers)
                stored += sum(isinstance(a, list) for a in answers)
            assert await st.ack(ALICE, 0, stored) == stored
            assert st.writer.pieces > 1
            assert await st.queue_length(ALICE, 0) == 0
            assert await st.expire(T0 + n + 1) == 0  # the dedupe ids, also in pieces if need be
            assert await st.enqueue([(ALICE, 0, b"again")], now=T0) == [stored + 1]


async def test_media_expiry_that_cannot_unlink_a_file_is_a_storage_error(tmp_path: Path) -> None:
    """A blob file that cannot be removed (here: a directory stands where the file was,
    so unlink fails with EISDIR, as it would with EIO or EROFS) used to raise a bare
    OSError out of ``media_expire``, past the node's expiry loop, which stops the node.
    It is a ``StorageError`` now: the loop logs it and tries again later."""
    import hashlib

    from storage import StorageError
    from storage._media_files import MediaFiles

    async with LmdbStorage.open(tmp_path / "db", map_size=1 << 22) as store:
        data = b"blob" * 100
        media_id = hashlib.sha256(data).digest()
        await store.media_append(media_id, len(data), 0, data, owner=ALICE, now=1000.0)
        path = MediaFiles(tmp_path / "db" / "media").path(media_id)
        assert path.exists(), path
        path.unlink()
        path.mkdir()
        (path / "in-the-way").write_bytes(b"x")
        with pytest.raises(StorageError):
            await store.media_expire(10_000.0)
        assert await store.media_status(media_id) is None  # the record went; the file waits
