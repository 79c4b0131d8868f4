"""media_upload / media_status / media_download across in-process nodes."""

from __future__ import annotations

import hashlib
import logging
import os

import trio
from relay_harness import Cluster, connect, device_homed_at, make_configs, publish, session

from relay.config.ring import Ring
from relay.protocol import Limits
from relay.protocol.frames import (
    Error,
    MediaChunk,
    MediaDownload,
    MediaProgress,
    MediaStatus,
    MediaUpload,
)
from relay.services.federation import Federation
from relay.services.media import MediaService
from storage import MEDIA_CHUNK_MAX
from storage.memory import MemoryStorage

CHUNK = MEDIA_CHUNK_MAX


def blob(n: int) -> tuple[bytes, bytes]:
    data = os.urandom(n)
    return data, hashlib.sha256(data).digest()


async def upload(client, data: bytes, media_id: bytes, start: int = 0,
                 stop: int | None = None) -> MediaProgress:
    """Upload ``data[start:stop]`` chunk by chunk; return the last progress."""
    offset, end = start, len(data) if stop is None else stop
    answer = None
    while offset < end or answer is None:
        piece = data[offset:min(offset + CHUNK, end)]
        answer = await client.request(MediaUpload(id=client.next_id(), media_id=media_id,
                                                  size=len(data), offset=offset, chunk=piece))
        assert isinstance(answer, MediaProgress), answer
        offset += len(piece)
        assert answer.received == offset
    return answer


async def download(client, node_id: str, media_id: bytes, length: int = CHUNK) -> bytes:
    out = bytearray()
    while True:
        answer = await client.request(MediaDownload(id=client.next_id(), node_id=node_id,
                                                    media_id=media_id, offset=len(out),
                                                    length=length))
        assert isinstance(answer, MediaChunk), answer
        out += answer.data
        if len(out) >= answer.size:
            assert len(out) == answer.size
            return bytes(out)


async def test_upload_at_home_download_anywhere(cluster3) -> None:
    with trio.fail_after(20):
        alice = device_homed_at(cluster3.ring, "n1")
        bob = device_homed_at(cluster3.ring, "n2")
        await publish(cluster3.url("n1"), alice)
        await publish(cluster3.url("n2"), bob)
        data, mid = blob(2 * CHUNK + 1)
        async with session(cluster3.url("n1"), alice) as a:
            status = await a.request(MediaStatus(id=5, media_id=mid))
            assert status == MediaProgress(id=5, received=0, size=0, complete=False)
            last = await upload(a, data, mid)
            assert (last.received, last.size, last.complete) == (len(data), len(data), True)
            status = await a.request(MediaStatus(id=6, media_id=mid))
            assert status == MediaProgress(id=6, received=len(data), size=len(data), complete=True)
            assert await download(a, "n1", mid) == data
        async with session(cluster3.url("n2"), bob) as b:  # forwarded n2 -> n1, chunk by chunk
            assert await download(b, "n1", mid, length=100_000) == data
            assert (await b.request(MediaStatus(id=7, media_id=mid))).size == 0  # not held at n2
        # uploading the same complete blob again is a no-op answered "complete"
        async with session(cluster3.url("n1"), alice) as a:
            again = await a.request(MediaUpload(id=8, media_id=mid, size=len(data), offset=0,
                                                chunk=data[:10]))
            assert again == MediaProgress(id=8, received=len(data), size=len(data), complete=True)


async def test_upload_resumes_on_a_new_connection(cluster3) -> None:
    with trio.fail_after(20):
        alice = device_homed_at(cluster3.ring, "n3")
        await publish(cluster3.url("n3"), alice)
        data, mid = blob(3 * CHUNK + 77)
        async with session(cluster3.url("n3"), alice) as a:
            await upload(a, data, mid, stop=2 * CHUNK)
        # the connection dropped; a new one asks how far it got and goes on from there
        async with session(cluster3.url("n3"), alice) as a:
            status = await a.request(MediaStatus(id=5, media_id=mid))
            assert (status.received, status.size, status.complete) == (2 * CHUNK, len(data), False)
            stale = await a.request(MediaUpload(id=6, media_id=mid, size=len(data), offset=CHUNK,
                                                chunk=data[CHUNK:2 * CHUNK]))
            assert isinstance(stale, Error) and stale.code == "bad_request"
            assert "offset" in stale.message
            assert (await upload(a, data, mid, start=status.received)).complete
            assert await download(a, "n3", mid) == data


async def test_upload_refusals(nursery) -> None:
    with trio.fail_after(20):
        cluster = Cluster(nursery, make_configs(1, max_media_size=CHUNK * 4))
        await cluster.start("n1")
        alice = device_homed_at(cluster.ring, "n1")
        await publish(cluster.url("n1"), alice)
        data, mid = blob(CHUNK + 1)
        url = cluster.url("n1")
        async with connect(url) as raw:  # not authenticated
            await raw.hello()
            answer = await raw.request(MediaUpload(id=3, media_id=mid, size=1, offset=0,
                                                   chunk=b"x"))
            assert isinstance(answer, Error) and answer.code == "unauthorized"
        async with session(url, alice) as a:
            cases = [
                (MediaUpload(id=10, media_id=mid, size=len(data), offset=0, chunk=data),
                 "too_large"),  # chunk of 256 KiB + 1
                (MediaUpload(id=11, media_id=mid, size=CHUNK * 4 + 1, offset=0, chunk=b"x"),
                 "too_large"),  # above max_media_size
                (MediaUpload(id=12, media_id=mid[:16], size=1, offset=0, chunk=b"x"),
                 "bad_request"),
                (MediaUpload(id=13, media_id=mid, size=len(data), offset=5, chunk=b"x"),
                 "bad_request"),  # a new blob starts at 0
                (MediaUpload(id=14, media_id=mid, size=3, offset=0, chunk=b"abcd"),
                 "bad_request"),  # past the end
                (MediaUpload(id=15, media_id=mid, size=-1, offset=0, chunk=b"x"), "bad_request"),
                (MediaStatus(id=16, media_id=b"short"), "bad_request"),
            ]
            for frame, code in cases:
                answer = await a.request(frame)
                assert isinstance(answer, Error) and answer.code == code, (frame.id, answer)
            # the last chunk does not hash to media_id: the blob is discarded
            await a.request(MediaUpload(id=20, media_id=mid, size=len(data), offset=0,
                                        chunk=data[:CHUNK]))
            bad = await a.request(MediaUpload(id=21, media_id=mid, size=len(data), offset=CHUNK,
                                              chunk=b"\x00"))
            assert isinstance(bad, Error) and bad.code == "bad_request"
            assert "hash" in bad.message
            status = await a.request(MediaStatus(id=22, media_id=mid))
            assert (status.received, status.size) == (0, 0)
            assert (await upload(a, data, mid)).complete  # a proper upload still works


async def test_quota_answers_storage_full(nursery) -> None:
    with trio.fail_after(20):
        cluster = Cluster(nursery, make_configs(1, media_quota=3 * CHUNK))
        await cluster.start("n1")
        alice = device_homed_at(cluster.ring, "n1")
        await publish(cluster.url("n1"), alice)
        first, fid = blob(2 * CHUNK)
        second, sid = blob(2 * CHUNK)
        async with session(cluster.url("n1"), alice) as a:
            assert (await upload(a, first, fid)).complete
            full = await a.request(MediaUpload(id=30, media_id=sid, size=len(second), offset=0,
                                               chunk=second[:CHUNK]))
            assert isinstance(full, Error) and full.code == "storage_full"
            assert (await a.request(MediaStatus(id=31, media_id=sid))).size == 0
            assert await cluster.storages["n1"].media_usage() == 2 * CHUNK


async def test_download_refusals(cluster3) -> None:
    with trio.fail_after(20):
        alice = device_homed_at(cluster3.ring, "n1")
        bob = device_homed_at(cluster3.ring, "n2")
        await publish(cluster3.url("n1"), alice)
        await publish(cluster3.url("n2"), bob)
        data, mid = blob(1000)
        part, pid = blob(CHUNK + 5)
        async with session(cluster3.url("n1"), alice) as a:
            await upload(a, data, mid)
            await upload(a, part, pid, stop=CHUNK)  # unfinished: not downloadable
        async with session(cluster3.url("n2"), bob) as b:
            cases = [
                (MediaDownload(id=10, node_id="n1", media_id=os.urandom(32), offset=0,
                               length=10), "not_found"),
                (MediaDownload(id=11, node_id="n1", media_id=pid, offset=0, length=10),
                 "not_found"),
                (MediaDownload(id=12, node_id="n2", media_id=mid, offset=0, length=10),
                 "not_found"),  # not held here
                (MediaDownload(id=13, node_id="n9", media_id=os.urandom(32), offset=0,
                               length=10), "not_found"),  # no node n9, nor the blob anywhere
                (MediaDownload(id=14, node_id="n1", media_id=mid, offset=0, length=CHUNK + 1),
                 "too_large"),
                (MediaDownload(id=15, node_id="n1", media_id=mid, offset=1001, length=1),
                 "bad_request"),
                (MediaDownload(id=16, node_id="n1", media_id=mid, offset=-1, length=1),
                 "bad_request"),
            ]
            for frame, code in cases:
                answer = await b.request(frame)
                assert isinstance(answer, Error) and answer.code == code, (frame.id, answer)
            tail = await b.request(MediaDownload(id=17, node_id="n1", media_id=mid, offset=990,
                                                 length=CHUNK))
            assert tail == MediaChunk(id=17, data=data[990:], size=1000)
            cluster3.stop("n1")
            down = await b.request(MediaDownload(id=18, node_id="n1", media_id=mid, offset=0,
                                                 length=10))
            assert isinstance(down, Error) and down.code == "unavailable"


async def test_expire_uses_the_ttls() -> None:
    ttl, upload_ttl = 100.0, 10.0
    configs = make_configs(1)
    storage = MemoryStorage()
    ring = Ring(configs[0].cluster)
    log = logging.getLogger("test.media")
    fed = Federation("n1", configs[0].signing_key, ring, Limits(), log)
    media = MediaService("n1", ring, storage, fed, log, ttl=ttl, upload_ttl=upload_ttl)
    data, mid = blob(10)
    part, pid = blob(10)
    await storage.media_append(mid, 10, 0, data, owner="a" * 52, now=1000.0)
    await storage.media_append(pid, 10, 0, part[:5], owner="a" * 52, now=1000.0)
    assert await media.expire(now=1000.0 + upload_ttl) == 0
    assert await media.expire(now=1000.0 + upload_ttl + 1) == 1  # the stalled upload
    assert await storage.media_status(pid) is None
    assert await media.expire(now=1000.0 + ttl) == 0
    assert await media.expire(now=1000.0 + ttl + 1) == 1
    assert await storage.media_status(mid) is None


async def test_a_declared_size_reserves_no_quota(nursery) -> None:
    with trio.fail_after(20):
        cluster = Cluster(nursery, make_configs(1, media_quota=4 * CHUNK))
        await cluster.start("n1")
        mallory = device_homed_at(cluster.ring, "n1")
        alice = device_homed_at(cluster.ring, "n1")
        await publish(cluster.url("n1"), mallory)
        await publish(cluster.url("n1"), alice)
        _, squat = blob(32)
        async with session(cluster.url("n1"), mallory) as m:  # claims the whole quota, sends 1 B
            answer = await m.request(MediaUpload(id=3, media_id=squat, size=4 * CHUNK, offset=0,
                                                 chunk=b"x"))
            assert isinstance(answer, MediaProgress) and answer.received == 1
        data, mid = blob(3 * CHUNK)
        async with session(cluster.url("n1"), alice) as a:
            assert (await upload(a, data, mid)).complete
            assert await download(a, "n1", mid) == data
