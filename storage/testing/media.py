"""Conformance: media blobs (``media_append`` / ``media_status`` / ``media_read`` /
``media_usage`` / ``media_expire``)."""

from __future__ import annotations

import hashlib
import os

import pytest
import trio

from ..base import MEDIA_CHUNK_MAX, MediaInfo
from ..errors import MediaConflict, MediaCorrupt, StorageFull
from ._base import ALICE, BOB, ConformanceBase, needs, uid

T0 = 1_800_000_000.0
K = 1024


def blob(n: int, seed: int = 0) -> tuple[bytes, bytes]:
    """``(data, media_id)`` of ``n`` deterministic pseudo-random bytes."""
    out = bytearray()
    block = hashlib.sha256(b"media-%d" % seed).digest()
    while len(out) < n:
        block = hashlib.sha256(block).digest()
        out += block * 64
    data = bytes(out[:n])
    return data, hashlib.sha256(data).digest()


async def upload(st, data: bytes, media_id: bytes, *, chunk: int = MEDIA_CHUNK_MAX,
                 owner: str = ALICE, now: float = T0, **kwargs) -> MediaInfo:
    """Append ``data`` from offset 0 in ``chunk``-byte pieces; return the last state."""
    offset = 0
    info = None
    while offset < len(data) or info is None:
        piece = data[offset:offset + chunk]
        info = await st.media_append(media_id, len(data), offset, piece, owner=owner, now=now,
                                     **kwargs)
        offset += len(piece)
    return info


class MediaConformance(ConformanceBase):
    """Chunked, ordered, hash-checked blobs; quota; expiry; durability."""

    async def test_media_round_trip_in_chunks(self) -> None:
        async with self.opened() as st:
            data, mid = blob(2 * MEDIA_CHUNK_MAX + 12345)
            assert await st.media_status(mid) is None
            first = await st.media_append(mid, len(data), 0, data[:MEDIA_CHUNK_MAX], owner=ALICE,
                                          now=T0)
            assert first == MediaInfo(mid, len(data), MEDIA_CHUNK_MAX, False, ALICE, T0)
            assert await st.media_read(mid, 0, 10) is None  # not complete yet
            assert await st.media_usage() == MEDIA_CHUNK_MAX
            second = await st.media_append(mid, len(data), MEDIA_CHUNK_MAX,
                                           data[MEDIA_CHUNK_MAX:2 * MEDIA_CHUNK_MAX],
                                           owner=ALICE, now=T0 + 1)
            assert (second.received, second.complete, second.ts) == (2 * MEDIA_CHUNK_MAX, False,
                                                                       T0 + 1)
            info = await st.media_append(mid, len(data), 2 * MEDIA_CHUNK_MAX,
                                         data[2 * MEDIA_CHUNK_MAX:], owner=ALICE, now=T0 + 2)
            assert info == MediaInfo(mid, len(data), len(data), True, ALICE, T0 + 2)
            assert await st.media_status(mid) == info
            # reads at any offset, across chunk boundaries, and at the end
            got = bytearray()
            for offset in range(0, len(data), 100_000):
                got += await st.media_read(mid, offset, 100_000)
            assert bytes(got) == data
            edge = MEDIA_CHUNK_MAX - 7
            assert await st.media_read(mid, edge, MEDIA_CHUNK_MAX) == data[edge:edge + MEDIA_CHUNK_MAX]
            assert await st.media_read(mid, len(data) - 3, 10) == data[-3:]
            assert await st.media_read(mid, len(data), 10) == b""
            assert await st.media_usage() == len(data)

    async def test_media_tiny_blobs(self) -> None:
        async with self.opened() as st:
            empty = hashlib.sha256(b"").digest()
            info = await st.media_append(empty, 0, 0, b"", owner=ALICE, now=T0)
            assert (info.size, info.received, info.complete) == (0, 0, True)
            assert await st.media_read(empty, 0, 10) == b""
            one = hashlib.sha256(b"x").digest()
            info = await st.media_append(one, 1, 0, b"x", owner=BOB, now=T0)
            assert (info.size, info.received, info.complete, info.owner) == (1, 1, True, BOB)
            assert await st.media_read(one, 0, 1) == b"x"
            # small chunks are fine too
            data, mid = blob(1000)
            assert (await upload(st, data, mid, chunk=7)).complete
            assert await st.media_read(mid, 0, 1000) == data

    async def test_media_append_must_continue_the_blob(self) -> None:
        async with self.opened() as st:
            data, mid = blob(3000)
            await st.media_append(mid, 3000, 0, data[:1000], owner=ALICE, now=T0)
            for offset in (0, 999, 1001, 2000):
                with pytest.raises(MediaConflict):
                    await st.media_append(mid, 3000, offset, data[offset:offset + 500],
                                          owner=ALICE, now=T0)
            with pytest.raises(MediaConflict):  # another size
                await st.media_append(mid, 4000, 1000, data[1000:2000], owner=ALICE, now=T0)
            with pytest.raises(MediaConflict):  # another user's unfinished upload
                await st.media_append(mid, 3000, 1000, data[1000:2000], owner=BOB, now=T0)
            with pytest.raises(MediaConflict):  # a fresh blob starts at 0
                _, other = blob(10, seed=1)
                await st.media_append(other, 10, 5, b"12345", owner=ALICE, now=T0)
            assert await st.media_status(other) is None
            assert (await st.media_status(mid)).received == 1000  # nothing of the refusals stored
            info = await st.media_append(mid, 3000, 1000, data[1000:], owner=ALICE, now=T0)
            assert info.complete
            # a complete blob: appends store nothing and report it, whoever asks
            again = await st.media_append(mid, 3000, 0, data[:10], owner=BOB, now=T0 + 9)
            assert again == info
            with pytest.raises(MediaConflict):
                await st.media_append(mid, 5000, 0, data[:10], owner=ALICE, now=T0)

    async def test_media_concurrent_appends_at_one_offset(self) -> None:
        async with self.opened() as st:
            data, mid = blob(4000)
            await st.media_append(mid, 4000, 0, data[:1000], owner=ALICE, now=T0)
            outcomes: list[object] = []

            async def append() -> None:
                try:
                    outcomes.append(await st.media_append(mid, 4000, 1000, data[1000:2000],
                                                          owner=ALICE, now=T0))
                except MediaConflict:
                    outcomes.append(MediaConflict)

            async with trio.open_nursery() as nursery:
                for _ in range(5):
                    nursery.start_soon(append)
            assert outcomes.count(MediaConflict) == 4
            assert (await st.media_status(mid)).received == 2000

    async def test_media_hash_mismatch_deletes_the_blob(self) -> None:
        async with self.opened() as st:
            data, mid = blob(MEDIA_CHUNK_MAX + 10)
            await st.media_append(mid, len(data), 0, data[:MEDIA_CHUNK_MAX], owner=ALICE, now=T0)
            tampered = bytes([data[-1] ^ 1])
            with pytest.raises(MediaCorrupt):
                await st.media_append(mid, len(data), MEDIA_CHUNK_MAX,
                                      data[MEDIA_CHUNK_MAX:-1] + tampered, owner=ALICE, now=T0)
            assert await st.media_status(mid) is None
            assert await st.media_read(mid, 0, 10) is None
            assert await st.media_usage() == 0
            with pytest.raises(MediaCorrupt):  # a one-chunk blob too
                await st.media_append(mid, 5, 0, b"wrong", owner=ALICE, now=T0)
            assert await st.media_status(mid) is None
            # and the id can be uploaded properly afterwards
            assert (await upload(st, data, mid)).complete
            assert await st.media_read(mid, MEDIA_CHUNK_MAX, 10) == data[MEDIA_CHUNK_MAX:]

    async def test_media_bad_arguments(self) -> None:
        async with self.opened() as st:
            data, mid = blob(MEDIA_CHUNK_MAX + 1)
            with pytest.raises(ValueError):
                await st.media_append(mid[:31], 10, 0, b"x", owner=ALICE)
            with pytest.raises(ValueError):
                await st.media_append(mid, len(data), 0, data, owner=ALICE)  # > MEDIA_CHUNK_MAX
            with pytest.raises(ValueError):
                await st.media_append(mid, 5, 3, b"abc", owner=ALICE)  # past the end
            with pytest.raises(ValueError):
                await st.media_append(mid, 5, 0, b"", owner=ALICE)
            with pytest.raises(ValueError):
                await st.media_append(mid, -1, 0, b"", owner=ALICE)
            assert await st.media_status(mid) is None
            small, sid = blob(100)
            await upload(st, small, sid)
            for offset, length in ((101, 1), (-1, 1), (0, -1), (0, MEDIA_CHUNK_MAX + 1)):
                with pytest.raises(ValueError):
                    await st.media_read(sid, offset, length)
            assert await st.media_read(os.urandom(32), 0, 1) is None

    async def test_media_quota(self) -> None:
        async with self.opened() as st:
            a, aid = blob(3000, seed=1)
            b, bid = blob(3000, seed=2)
            c, cid = blob(1000, seed=3)
            q = {"max_total": 5000}
            await st.media_append(aid, 3000, 0, a[:100], owner=ALICE, now=T0, **q)
            assert await st.media_usage() == 100  # what is stored, not what is declared
            with pytest.raises(StorageFull):  # a size that could never fit is refused at once
                await st.media_append(cid, 5001, 0, b"x", owner=ALICE, **q)
            assert await st.media_status(cid) is None
            # declaring a size reserves nothing: b starts though a and b cannot both finish
            await st.media_append(bid, 3000, 0, b[:2000], owner=BOB, now=T0 + 10, **q)
            info = await st.media_append(aid, 3000, 100, a[100:], owner=ALICE, now=T0, **q)
            assert info.complete and await st.media_usage() == 5000  # exactly at the limit
            with pytest.raises(StorageFull):  # b's last 1000 bytes no longer fit
                await st.media_append(bid, 3000, 2000, b[2000:], owner=BOB, **q)
            assert (await st.media_status(bid)).received == 2000  # nothing of it stored
            with pytest.raises(StorageFull):
                await st.media_append(cid, 1000, 0, c, owner=ALICE, **q)
            assert await st.media_expire(T0 + 1) == 1  # a (ts T0) goes, b (T0 + 10) stays
            assert await st.media_usage() == 2000
            assert (await st.media_append(bid, 3000, 2000, b[2000:], owner=BOB, **q)).complete
            assert (await st.media_append(cid, 1000, 0, c, owner=ALICE, **q)).complete
            assert await st.media_usage() == 4000
            assert await st.media_owner_usage(ALICE) == 1000
            assert await st.media_owner_usage(BOB) == 3000
            assert await st.media_owner_usage(uid("nobody")) == 0

    async def test_media_expire(self) -> None:
        async with self.opened() as st:
            old, oid = blob(500, seed=1)
            new, nid = blob(MEDIA_CHUNK_MAX + 1, seed=2)
            part, pid = blob(800, seed=3)
            await upload(st, old, oid, now=T0)
            await upload(st, new, nid, now=T0 + 100)
            await st.media_append(pid, 800, 0, part[:400], owner=BOB, now=T0)
            await st.media_append(pid, 800, 400, part[400:600], owner=BOB, now=T0 + 50)
            assert await st.media_expire(T0) == 0  # strictly before
            assert await st.media_expire(T0 + 50) == 1
            assert await st.media_status(oid) is None
            assert await st.media_read(oid, 0, 1) is None
            assert (await st.media_status(pid)).received == 600  # its last append was at T0+50
            assert await st.media_expire(T0 + 100) == 1
            assert await st.media_status(pid) is None
            assert await st.media_read(nid, MEDIA_CHUNK_MAX, 1) == new[-1:]
            assert await st.media_usage() == len(new)
            # an expired id can be uploaded again from scratch
            assert (await upload(st, old, oid, now=T0 + 200)).complete
            assert await st.media_read(oid, 0, 500) == old

    async def test_media_expire_stalled_uploads_sooner(self) -> None:
        async with self.opened() as st:
            done, did = blob(300, seed=1)
            part, pid = blob(300, seed=2)
            fresh, fid = blob(300, seed=3)
            await upload(st, done, did, now=T0)
            await st.media_append(pid, 300, 0, part[:100], owner=ALICE, now=T0)
            await st.media_append(fid, 300, 0, fresh[:100], owner=ALICE, now=T0 + 50)
            # complete blobs live until older_than; unfinished ones until incomplete_older_than
            assert await st.media_expire(T0 - 100, incomplete_older_than=T0 + 10) == 1
            assert await st.media_status(pid) is None
            assert await st.media_status(did) is not None
            assert (await st.media_status(fid)).received == 100
            assert await st.media_usage() == 300 + 100
            # a bound earlier than older_than does not keep unfinished blobs longer
            assert await st.media_expire(T0 + 60, incomplete_older_than=T0 - 100) == 2
            assert await st.media_usage() == 0

    @needs("reopen")
    async def test_media_survives_reopen(self) -> None:
        done, did = blob(MEDIA_CHUNK_MAX + 3, seed=1)
        part, pid = blob(3 * MEDIA_CHUNK_MAX, seed=2)
        async with self.opened() as st:
            await upload(st, done, did)
            await st.media_append(pid, len(part), 0, part[:MEDIA_CHUNK_MAX], owner=BOB, now=T0)
        async with self.opened() as st:
            assert await st.media_status(did) == MediaInfo(did, len(done), len(done), True, ALICE,
                                                           T0)
            assert await st.media_read(did, MEDIA_CHUNK_MAX, 10) == done[MEDIA_CHUNK_MAX:]
            assert await st.media_status(pid) == MediaInfo(pid, len(part), MEDIA_CHUNK_MAX,
                                                           False, BOB, T0)
            assert await st.media_usage() == len(done) + MEDIA_CHUNK_MAX
            for offset in (MEDIA_CHUNK_MAX, 2 * MEDIA_CHUNK_MAX):
                info = await st.media_append(pid, len(part), offset,
                                             part[offset:offset + MEDIA_CHUNK_MAX], owner=BOB)
            assert info.complete
            assert await st.media_read(pid, 2 * MEDIA_CHUNK_MAX - 5, 10) == part[2 * MEDIA_CHUNK_MAX - 5:2 * MEDIA_CHUNK_MAX + 5]
