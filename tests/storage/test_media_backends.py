"""Backend-specific media behaviour: where the LMDB backend keeps the bytes, crash
leftovers (bytes past ``received``, orphan files), full disk; the memory backend's
capacity accounting. The shared contract is in ``storage/testing/media.py``."""

from __future__ import annotations

import errno
import hashlib
import os
from pathlib import Path

import pytest
import trio

from storage import MediaConflict, StorageFull
from storage import _lmdb_media as lmdb_media
from storage.lmdb import LmdbStorage
from storage.memory import MemoryStorage
from storage.testing import ALICE

CHUNK = 256 * 1024
T0 = 1_800_000_000.0


def blob(n: int) -> tuple[bytes, bytes]:
    data = os.urandom(n)
    return data, hashlib.sha256(data).digest()


async def test_lmdb_keeps_blob_bytes_in_files_not_in_the_map(tmp_path: Path) -> None:
    marker = b"MEDIA-BYTES-" + os.urandom(8).hex().encode()
    data = (marker * (3 * CHUNK // len(marker) + 1))[:3 * CHUNK]
    mid = hashlib.sha256(data).digest()
    with trio.fail_after(20):
        async with LmdbStorage.open(tmp_path / "db", map_size=1 << 20) as st:  # 1 MiB map
            for off in range(0, len(data), CHUNK):
                await st.media_append(mid, len(data), off, data[off:off + CHUNK], owner=ALICE)
            assert await st.media_read(mid, CHUNK, 10) == data[CHUNK:CHUNK + 10]
    assert (tmp_path / "db" / "media" / mid.hex()).read_bytes() == data
    assert marker not in (tmp_path / "db" / "data.mdb").read_bytes()


async def test_lmdb_bytes_past_received_are_ignored_and_overwritten(tmp_path: Path) -> None:
    data, mid = blob(2 * CHUNK)
    with trio.fail_after(20):
        async with LmdbStorage.open(tmp_path / "db") as st:
            await st.media_append(mid, len(data), 0, data[:CHUNK], owner=ALICE, now=T0)
        # a crash after the file write of the next chunk but before its commit
        path = tmp_path / "db" / "media" / mid.hex()
        with path.open("ab") as f:
            f.write(b"\xee" * (CHUNK + 100))
        async with LmdbStorage.open(tmp_path / "db") as st:
            assert (await st.media_status(mid)).received == CHUNK
            with pytest.raises(MediaConflict):
                await st.media_append(mid, len(data), 2 * CHUNK - 1, b"x", owner=ALICE)
            info = await st.media_append(mid, len(data), CHUNK, data[CHUNK:], owner=ALICE)
            assert info.complete
            assert await st.media_read(mid, CHUNK - 5, 10) == data[CHUNK - 5:CHUNK + 5]


async def test_lmdb_removes_orphan_files_on_first_use(tmp_path: Path) -> None:
    data, mid = blob(1000)
    with trio.fail_after(20):
        async with LmdbStorage.open(tmp_path / "db") as st:
            await st.media_append(mid, 1000, 0, data, owner=ALICE)
        media_dir = tmp_path / "db" / "media"
        orphan = media_dir / os.urandom(32).hex()  # a record deleted, its file not yet
        orphan.write_bytes(b"left over")
        other = media_dir / "README"  # not ours: left alone
        other.write_bytes(b"x")
        async with LmdbStorage.open(tmp_path / "db") as st:
            assert await st.media_status(mid) is not None
            assert sorted(p.name for p in media_dir.iterdir()) == sorted([mid.hex(), "README"])


async def test_lmdb_expiry_deletes_files(tmp_path: Path) -> None:
    old, oid = blob(100)
    new, nid = blob(100)
    with trio.fail_after(20):
        async with LmdbStorage.open(tmp_path / "db") as st:
            await st.media_append(oid, 100, 0, old, owner=ALICE, now=T0)
            await st.media_append(nid, 100, 0, new, owner=ALICE, now=T0 + 10)
            assert await st.media_expire(T0 + 5) == 1
        assert [p.name for p in (tmp_path / "db" / "media").iterdir()] == [nid.hex()]


async def test_lmdb_full_disk_is_storage_full_and_stores_nothing(tmp_path: Path, monkeypatch) -> None:
    data, mid = blob(2 * CHUNK)
    with trio.fail_after(20):
        async with LmdbStorage.open(tmp_path / "db") as st:
            await st.media_append(mid, len(data), 0, data[:CHUNK], owner=ALICE)

            def full(*args: object) -> None:
                raise OSError(errno.ENOSPC, "No space left on device")

            monkeypatch.setattr(lmdb_media, "write_at", full)  # as imported by the LMDB media mixin
            with pytest.raises(StorageFull):
                await st.media_append(mid, len(data), CHUNK, data[CHUNK:], owner=ALICE)
            _, other = blob(10)
            with pytest.raises(StorageFull):
                await st.media_append(other, 10, 0, b"0123456789", owner=ALICE)
            assert (await st.media_status(mid)).received == CHUNK
            assert await st.media_status(other) is None
            monkeypatch.undo()
            assert (await st.media_append(mid, len(data), CHUNK, data[CHUNK:],
                                          owner=ALICE)).complete


async def test_memory_capacity_counts_media() -> None:
    st = MemoryStorage(capacity_bytes=CHUNK + 1000)
    data, mid = blob(2 * CHUNK)
    await st.media_append(mid, len(data), 0, data[:CHUNK], owner=ALICE)
    with pytest.raises(StorageFull):
        await st.media_append(mid, len(data), CHUNK, data[CHUNK:], owner=ALICE)
    assert (await st.media_status(mid)).received == CHUNK
    assert await st.media_expire(float("inf")) == 1  # frees the room
    small, sid = blob(CHUNK)
    assert (await st.media_append(sid, CHUNK, 0, small, owner=ALICE)).complete
