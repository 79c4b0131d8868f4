"""The media methods of :class:`storage.memory.MemoryStorage` (a mixin).

Blobs are kept as lists of the appended chunks (never joined into one
``bytes``). Accounting follows the memory backend's ``capacity_bytes``: the
chunks' bytes plus a small per-blob overhead. Every call runs synchronously
after one Trio checkpoint, so it is atomic with respect to other tasks; the
SHA-256 check of a finished blob runs on the loop too (this backend is for
tests and small throw-away nodes).

The mixin relies on the host class's ``_enter()`` (checkpoint, closed check),
``_reserve(delta)`` (capacity accounting, raises StorageFull) and ``_used``.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field

from ._keys import check_bytes, check_user_id
from ._media_args import (
    check_continues,
    check_media_append,
    check_media_id,
    check_media_read,
    over_quota,
)
from .base import MEDIA_CHUNK_MAX, MediaInfo
from .errors import MediaCorrupt, StorageFull

_BLOB_OVERHEAD = 64


@dataclass(slots=True)
class _Blob:
    size: int
    owner: str
    ts: float
    received: int = 0
    complete: bool = False
    chunks: list[bytes] = field(default_factory=list)

    def info(self, media_id: bytes) -> MediaInfo:
        return MediaInfo(media_id, self.size, self.received, self.complete, self.owner, self.ts)


class MemoryMediaMixin:
    """Media blobs in process memory; see :class:`storage.base.Storage` ("media")."""

    def _blobs(self) -> dict[bytes, _Blob]:
        blobs = self.__dict__.get("_media_blobs")
        if blobs is None:
            blobs = self.__dict__["_media_blobs"] = {}
        return blobs

    async def media_append(
        self, media_id: bytes, size: int, offset: int, chunk: bytes, *, owner: str,
        max_total: int | None = None, now: float | None = None,
    ) -> MediaInfo:
        """See :meth:`storage.base.Storage.media_append`."""
        await self._enter()  # type: ignore[attr-defined]
        media_id = check_media_id(media_id)
        chunk = check_bytes("chunk", chunk)
        check_user_id(owner)
        check_media_append(size, offset, len(chunk))
        ts = time.time() if now is None else float(now)
        blobs = self._blobs()
        blob = blobs.get(media_id)
        if blob is not None and blob.complete and blob.size == size:
            return blob.info(media_id)
        info = None if blob is None else blob.info(media_id)
        check_continues(info, size, offset, owner)
        if max_total is not None and over_quota(self._usage(), info, size, len(chunk), max_total):
            raise StorageFull(f"media quota of {max_total} bytes exceeded")
        if blob is None:
            self._reserve(len(chunk) + _BLOB_OVERHEAD)  # type: ignore[attr-defined]
            blob = blobs[media_id] = _Blob(size=size, owner=owner, ts=ts)
        else:
            self._reserve(len(chunk))  # type: ignore[attr-defined]
        if chunk:
            blob.chunks.append(chunk)
        blob.received += len(chunk)
        blob.ts = ts
        if blob.received == size:
            digest = hashlib.sha256()
            for part in blob.chunks:
                digest.update(part)
            if digest.digest() != media_id:
                self._drop_blob(media_id)
                raise MediaCorrupt("the blob's SHA-256 differs from its media id; it was deleted")
            blob.complete = True
        return blob.info(media_id)

    def _usage(self) -> int:
        return sum(b.received for b in self._blobs().values())

    def _drop_blob(self, media_id: bytes) -> None:
        blob = self._blobs().pop(media_id)
        self._used -= blob.received + _BLOB_OVERHEAD  # type: ignore[attr-defined]

    async def media_status(self, media_id: bytes) -> MediaInfo | None:
        """See :meth:`storage.base.Storage.media_status`."""
        await self._enter()  # type: ignore[attr-defined]
        media_id = check_media_id(media_id)
        blob = self._blobs().get(media_id)
        return None if blob is None else blob.info(media_id)

    async def media_read(self, media_id: bytes, offset: int, length: int) -> bytes | None:
        """See :meth:`storage.base.Storage.media_read`."""
        await self._enter()  # type: ignore[attr-defined]
        media_id = check_media_id(media_id)
        blob = self._blobs().get(media_id)
        if blob is None or not blob.complete:
            return None
        check_media_read(blob.size, offset, length)
        out: list[bytes] = []
        want_end = min(offset + length, blob.size)
        pos = 0
        for part in blob.chunks:
            end = pos + len(part)
            if end > offset and pos < want_end:
                out.append(part[max(offset - pos, 0):min(want_end - pos, len(part))])
            if end >= want_end:
                break
            pos = end
        data = b"".join(out)
        assert len(data) <= MEDIA_CHUNK_MAX
        return data

    async def media_usage(self) -> int:
        """See :meth:`storage.base.Storage.media_usage`."""
        await self._enter()  # type: ignore[attr-defined]
        return self._usage()

    async def media_owner_usage(self, owner: str) -> int:
        """See :meth:`storage.base.Storage.media_owner_usage`."""
        await self._enter()  # type: ignore[attr-defined]
        return sum(b.received for b in self._blobs().values() if b.owner == owner)

    async def media_expire(
        self, older_than: float, *, incomplete_older_than: float | None = None
    ) -> int:
        """See :meth:`storage.base.Storage.media_expire`."""
        await self._enter()  # type: ignore[attr-defined]
        stalled = older_than if incomplete_older_than is None else incomplete_older_than
        old = [m for m, b in self._blobs().items()
               if b.ts < older_than or (not b.complete and b.ts < stalled)]
        for media_id in old:
            self._drop_blob(media_id)
        return len(old)
