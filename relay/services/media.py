"""Media on a node: chunked uploads to the uploader's home, downloads from any node.

Media is ciphertext encrypted on the client (docs/media.md); the node sees
only sizes, the uploading user and who downloads. Flows (docs/media.md):

* ``media_upload {media_id, size, offset, chunk}`` from an authenticated
  device (so at its home): ``chunk`` is appended at ``offset``, which must be
  the bytes already received; the chunk that reaches ``size`` makes the node
  check SHA-256(blob) == ``media_id``. Answer ``media_progress``.
* ``media_status {media_id}``: ``media_progress`` of what this node holds
  (``received = size = 0`` if nothing), to resume an upload.
* ``media_download {node_id, media_id, offset, length}``: served from local
  storage when ``node_id`` is this node, else forwarded over the peer link to
  ``node_id`` (one hop; a peer's request is never forwarded again), one chunk
  per request, so memory stays bounded whatever the blob size. A blob that is not
  found there (``not_found``, or ``unavailable``) while a reshape is unfinished,
  or that names a node not in the cluster (removed by a reshape), is looked for
  here and on every other node: a reshape moves blobs with their uploader's home.

Limits (from :class:`relay.config.NodeConfig`): a chunk carries at most 256 KiB
(``too_large``); a blob is at most ``max_media_size`` bytes (``too_large``);
the node holds at most ``media_quota`` bytes of media (``storage_full``; an
upload reserves nothing beyond what it stored, so a declared size cannot lock
others out, but a size that could never fit is refused at its first chunk);
blobs whose last write is older than ``media_ttl``, and unfinished uploads idle
for ``media_upload_ttl``, are deleted by :meth:`MediaService.expire`, which the
node runs periodically.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable

from relay.config.ring import Ring
from relay.errors import RelayError
from relay.protocol import ErrorCode
from relay.protocol.frames import (
    MediaChunk,
    MediaDownload,
    MediaProgress,
    MediaStatus,
    MediaUpload,
)
from relay.services.federation import Federation, ask_peer
from storage import MEDIA_CHUNK_MAX, MEDIA_ID_SIZE, MediaConflict, MediaCorrupt, Storage

GiB = 1 << 30
DEFAULT_MEDIA_QUOTA = 10 * GiB
DEFAULT_MEDIA_TTL = 30 * 24 * 3600.0
DEFAULT_MEDIA_UPLOAD_TTL = 24 * 3600.0
DEFAULT_MAX_MEDIA_SIZE = 2 * GiB
DOWNLOAD_FORWARD_TIMEOUT = 10.0  # seconds for a peer to answer one forwarded chunk


def _check_media_id(media_id: bytes) -> None:
    if len(media_id) != MEDIA_ID_SIZE:
        raise RelayError(ErrorCode.BAD_REQUEST, f"media_id must be {MEDIA_ID_SIZE} bytes")


class MediaService:
    """The media requests of one node.

    Args:
        node_id: this node's id.
        ring: the cluster (to know which node ids exist).
        storage: the node's storage (media methods).
        federation: peer links, for forwarded downloads.
        log: the node's logger (metadata only: id prefixes, sizes).
        quota: most bytes all blobs may hold together.
        ttl: seconds after a blob's last write when it expires.
        upload_ttl: seconds after its last chunk when an unfinished upload expires.
        max_size: largest accepted blob, bytes.
        forward_timeout: seconds a peer may take to answer one forwarded download.
    """

    def __init__(
        self, node_id: str, ring: Ring, storage: Storage, federation: Federation,
        log: logging.Logger, *, quota: int = DEFAULT_MEDIA_QUOTA,
        ttl: float = DEFAULT_MEDIA_TTL, upload_ttl: float = DEFAULT_MEDIA_UPLOAD_TTL,
        max_size: int = DEFAULT_MAX_MEDIA_SIZE, forward_timeout: float = DOWNLOAD_FORWARD_TIMEOUT,
    ) -> None:
        self._node_id = node_id
        self._ring = ring
        self._storage = storage
        self._federation = federation
        self._log = log
        self.quota = quota
        self.ttl = ttl
        self.upload_ttl = upload_ttl
        self.max_size = max_size
        self.forward_timeout = forward_timeout
        #: ``reshaping()`` is True while a reshape is unfinished (blobs may be moving).
        self.reshaping: Callable[[], bool] = lambda: False

    async def upload(self, user_id: str, frame: MediaUpload) -> MediaProgress:
        """Append one chunk uploaded by ``user_id`` (an authenticated device of it).

        Raises:
            RelayError: ``too_large`` (chunk above 256 KiB, blob above
                ``max_size``), ``bad_request`` (malformed, offset not the bytes
                received, size or owner differs, hash mismatch: blob discarded).
            StorageFull: quota or disk full; nothing stored.
        """
        _check_media_id(frame.media_id)
        if len(frame.chunk) > MEDIA_CHUNK_MAX:
            raise RelayError(ErrorCode.TOO_LARGE,
                             f"a chunk carries at most {MEDIA_CHUNK_MAX} bytes")
        if frame.size > self.max_size:
            raise RelayError(ErrorCode.TOO_LARGE,
                             f"a file may be at most {self.max_size} bytes (encrypted)")
        if frame.size < 0 or frame.offset < 0:
            raise RelayError(ErrorCode.BAD_REQUEST, "size and offset must be >= 0")
        try:
            info = await self._storage.media_append(
                frame.media_id, frame.size, frame.offset, frame.chunk, owner=user_id,
                max_total=self.quota,
            )
        except MediaCorrupt as exc:
            self._log.info("media %s from %s: hash mismatch, discarded",
                           frame.media_id.hex()[:12], user_id[:8])
            raise RelayError(ErrorCode.BAD_REQUEST,
                             "the uploaded bytes do not hash to media_id; the blob was "
                             "discarded, upload it again from offset 0") from exc
        except (MediaConflict, ValueError) as exc:
            raise RelayError(ErrorCode.BAD_REQUEST, str(exc)) from exc
        if info.complete and frame.offset + len(frame.chunk) == info.size:
            self._log.info("media %s complete: %d bytes from %s", frame.media_id.hex()[:12],
                           info.size, user_id[:8])
        return MediaProgress(id=frame.id, received=info.received, size=info.size,
                             complete=info.complete)

    async def status(self, frame: MediaStatus) -> MediaProgress:
        """What this node holds of ``frame.media_id`` (zeros if nothing).

        Raises:
            RelayError: ``bad_request`` for a malformed id.
        """
        _check_media_id(frame.media_id)
        info = await self._storage.media_status(frame.media_id)
        if info is None:
            return MediaProgress(id=frame.id, received=0, size=0, complete=False)
        return MediaProgress(id=frame.id, received=info.received, size=info.size,
                             complete=info.complete)

    async def download(self, frame: MediaDownload, *, from_peer: bool) -> MediaChunk:
        """One chunk of a complete blob, read here or fetched from ``frame.node_id``.

        Args:
            frame: the request.
            from_peer: the request came over a peer link (then ``node_id`` must be us).

        Raises:
            RelayError: ``not_found`` (no such complete blob, unknown node),
                ``too_large`` (``length`` above 256 KiB), ``bad_request``
                (malformed, offset past the end, a peer asking for another node),
                ``unavailable`` (the holding node is unreachable).
        """
        _check_media_id(frame.media_id)
        if frame.length > MEDIA_CHUNK_MAX:
            raise RelayError(ErrorCode.TOO_LARGE, f"length is at most {MEDIA_CHUNK_MAX} bytes")
        if frame.offset < 0 or frame.length < 0:
            raise RelayError(ErrorCode.BAD_REQUEST, "offset and length must be >= 0")
        if from_peer:
            if frame.node_id != self._node_id:
                raise RelayError(ErrorCode.BAD_REQUEST, "media is not held by this node")
            return await self._read_local(frame)
        try:
            if frame.node_id == self._node_id:
                return await self._read_local(frame)
            return await self._forward(frame)
        except RelayError as exc:
            if exc.code not in (ErrorCode.NOT_FOUND, ErrorCode.UNAVAILABLE) or not (
                    self.reshaping() or self._ring.node(frame.node_id) is None):
                raise
            found = await self._search(frame)  # moved with its uploader by a reshape?
            if found is None:
                raise
            return found

    async def _read_local(self, frame: MediaDownload) -> MediaChunk:
        info = await self._storage.media_status(frame.media_id)
        if info is None or not info.complete:
            raise RelayError(ErrorCode.NOT_FOUND, "no such media on this node")
        if frame.offset > info.size:
            raise RelayError(ErrorCode.BAD_REQUEST, f"offset is past the size {info.size}")
        data = await self._storage.media_read(frame.media_id, frame.offset, frame.length)
        if data is None:
            raise RelayError(ErrorCode.NOT_FOUND, "no such media on this node")
        return MediaChunk(id=frame.id, data=data, size=info.size)

    async def _search(self, frame: MediaDownload) -> MediaChunk | None:
        """Look for a blob that is not where its reference says (a reshape moved it with
        its uploader's home, maybe off a removed node): here, then every other node."""
        if frame.node_id != self._node_id:
            try:
                return await self._read_local(frame)
            except RelayError as exc:
                if exc.code is not ErrorCode.NOT_FOUND:
                    raise
        for node in self._ring.nodes:
            if node.id in (self._node_id, frame.node_id):
                continue
            try:
                return dataclasses.replace(await ask_peer(
                    self._federation, node.id, dataclasses.replace(frame, node_id=node.id),
                    MediaChunk, self.forward_timeout, holder="node"), id=frame.id)
            except RelayError as exc:
                if exc.code not in (ErrorCode.NOT_FOUND, ErrorCode.UNAVAILABLE):
                    raise
        return None

    async def _forward(self, frame: MediaDownload) -> MediaChunk:
        if self._ring.node(frame.node_id) is None:
            raise RelayError(ErrorCode.NOT_FOUND, f"no node {frame.node_id!r} in the cluster")
        return await ask_peer(self._federation, frame.node_id, frame, MediaChunk,
                              self.forward_timeout, holder="node holding the media")

    async def expire(self, now: float | None = None) -> int:
        """Delete blobs whose last write is older than the TTL, and unfinished uploads idle
        for longer than the upload TTL; return how many went."""
        t = time.time() if now is None else now
        gone = await self._storage.media_expire(t - self.ttl,
                                                incomplete_older_than=t - self.upload_ttl)
        if gone:
            self._log.info("expired %d media blobs", gone)
        return gone
