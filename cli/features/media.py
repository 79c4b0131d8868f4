"""Sending and receiving files: encrypt, upload resumably, download, verify, decrypt, save.

Sending (``wa-cli send NAME --file PATH``)::

    async with Reconnecting(state) as rc:
        att = await upload_file(rc, path, progress=bar)     # Attachment (ref, key, hash, ...)
        result = await send_file(rc, user_id, att, caption)  # a "file" message over Olm

:func:`upload_file` encrypts ``PATH`` with a fresh key into a temporary
ciphertext under ``<home>/media/`` (:mod:`cli.mediacrypt`), then uploads it to
the device's home node in chunks of 256 KiB (``media_upload``), asking
``media_status`` first on every (re)connection, so a dropped connection
resumes where the node stopped. A group sender calls :func:`upload_file` too
and puts ``att.to_map()`` in its own payload.

Receiving (``wa-cli recv``): :func:`fetch_history_file` downloads the
ciphertext of a received file message (``media_download`` through the home,
which forwards to the holding node) into ``<home>/media/<media_id>.part``,
appending from what an earlier, interrupted attempt left; checks its SHA-256;
decrypts it next to the destination; and gives it a name in the downloads
directory that no existing file has (``name (1).ext``, ...). An integrity
failure deletes the partial data and saves nothing.

Memory stays bounded by one chunk at a time in every step; file I/O runs in
worker threads.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import mimetypes
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio

from cli.errors import ClientError, RelayError
from cli.events import SendResult
from cli.features import payload
from cli.features.attachment import DEFAULT_MIME, Attachment, AttachmentError, safe_name
from cli.features.group_messaging import GroupSendResult, send_group
from cli.features.mediacrypt import IntegrityError, decrypt_file, encrypt_file
from cli.features.sending import now_ms, send_payload
from cli.session.reconnecting import Reconnecting
from cli.session.session import Session
from cli.session.state import State
from relay.protocol import ErrorCode
from relay.protocol.frames import MediaDownload, MediaStatus, MediaUpload

__all__ = [
    "DOWNLOADS_DIR", "MEDIA_DIR", "IntegrityError", "Progress", "Reconnecting", "claim_name",
    "download_blob", "fetch_history_file", "save_attachment", "send_file", "send_group_file",
    "upload_blob", "upload_file",
]

log = logging.getLogger(__name__)

MEDIA_DIR = "media"  # under the device home: temporary ciphertexts (uploads, partial downloads)
DOWNLOADS_DIR = "downloads"  # default destination under the device home
CHUNK = 256 * 1024  # the protocol's limit per media_upload chunk / media_download length
HASH_READ = 1 << 20
_NO_HARD_LINKS = {errno.EPERM, errno.EXDEV, errno.EMLINK, errno.ENOTSUP, errno.EOPNOTSUPP}
MAX_NAME_TRIES = 10_000

Progress = Callable[[int, int], None]
"""``progress(done_bytes, total_bytes)``, called as a transfer advances (and when it resumes)."""

def _no_progress(done: int, total: int) -> None:
    pass


def work_dir(state: State) -> Path:
    """``<home>/media`` (created, mode 0700): where temporary ciphertexts live."""
    path = state.home / MEDIA_DIR
    path.mkdir(mode=0o700, exist_ok=True)
    return path


# ------------------------------------------------------------------- upload


async def upload_blob(client: Session, path: Path, media_id: bytes, size: int,
                      progress: Progress = _no_progress) -> None:
    """Upload ciphertext file ``path`` (``size`` bytes, SHA-256 ``media_id``) to the
    client's home node, from where the node says it stopped (``media_status``).

    Raises:
        RelayError: refused (``too_large``, ``storage_full``, ``bad_request``, ...).
        ConnectionLost: the connection dropped (call again to resume).
    """
    conn = client.connection
    status = await conn.request(MediaStatus, media_id=media_id)
    offset = status.received if status.size == size else 0
    progress(offset, size)
    if status.complete:
        return
    async with await trio.open_file(path, "rb") as f:
        while True:
            await f.seek(offset)
            chunk = await f.read(min(CHUNK, size - offset))
            if not chunk and offset < size:
                raise ClientError(f"{path} is shorter than the {size} bytes being uploaded")
            answer = await conn.request(MediaUpload, media_id=media_id, size=size,
                                        offset=offset, chunk=chunk)
            offset = answer.received
            progress(offset, size)
            if answer.complete:
                return


async def upload_file(rc: Reconnecting, path: Path, *,
                      progress: Progress = _no_progress) -> Attachment:
    """Encrypt ``path`` with a fresh key and upload the ciphertext to the home node.

    Returns:
        The :class:`Attachment` to put in a message (``node_id`` = the home node).

    Raises:
        OSError: ``path`` unreadable. RelayError, ConnectionFailed, ConnectionLost:
        the upload failed after :class:`Reconnecting`'s retries.
    """
    tmp = await trio.to_thread.run_sync(work_dir, rc.state) / f"up-{os.urandom(8).hex()}.enc"
    try:
        enc = await trio.to_thread.run_sync(encrypt_file, Path(path), tmp)
        await rc.run(lambda c: upload_blob(c, tmp, enc.sha256, enc.enc_size, progress))
        node_id = (await rc.client()).node_id
    finally:
        await trio.Path(tmp).unlink(missing_ok=True)
    name = Path(path).name
    mime = mimetypes.guess_type(name)[0] or DEFAULT_MIME
    return Attachment(node_id, enc.sha256, enc.enc_size, enc.key, enc.sha256, enc.size, name,
                      mime)


async def send_file(rc: Reconnecting, user_id: str, att: Attachment, caption: str = "", *,
                    source: str | None = None,
                    on_commit: Callable[[], None] | None = None) -> SendResult:
    """Send a ``file`` message for an uploaded attachment to ``user_id`` (and own other
    devices), recording it in local history (``source``: the file's absolute local path).
    ``on_commit()`` is called when the message may leave (the point of no return,
    :attr:`cli.session.session.Session.commit_hook`).

    Raises:
        ValueError: caption longer than ``payload.MAX_TEXT``. As :func:`cli.features.sending.send_payload`.
    """
    if len(caption) > payload.MAX_TEXT:
        raise ValueError(f"caption is longer than {payload.MAX_TEXT} characters")
    state = rc.state
    msg_id = os.urandom(16)
    p = payload.FilePayload(msg_id, caption, now_ms(), state.name, user_id, att)
    entry = {
        "id": msg_id.hex(), "direction": "out", "peer": user_id, "from": state.user_id,
        "from_device": state.device_id, "ts": p.ts, "from_name": state.name, "resends": 0,
        **payload.history_fields(p),
    }
    entry["file"]["path"] = source
    state.history.append(entry)

    async def step(session: Session) -> str:
        session.commit_hook = on_commit
        try:
            return await send_payload(session, user_id, msg_id, p.encode())
        finally:
            session.commit_hook = None

    status = await rc.run(step)
    return SendResult(msg_id, status, user_id)


async def send_group_file(rc: Reconnecting, group: str, att: Attachment, caption: str = "", *,
                          on_commit: Callable[[], None] | None = None) -> GroupSendResult:
    """Send a ``file`` message for an uploaded attachment to ``group`` (name or id),
    recording it in local history; ``on_commit`` as :func:`send_file`.

    Raises:
        ValueError: caption too long. As :func:`cli.features.group_messaging.send_group`.
    """
    if len(caption) > payload.MAX_TEXT:
        raise ValueError(f"caption is longer than {payload.MAX_TEXT} characters")
    state = rc.state
    record = state.groups.find(group)
    p = payload.FilePayload(os.urandom(16), caption, now_ms(), state.name, record.state.hex_id,
                            att)
    session = await rc.client()
    session.commit_hook = on_commit
    try:
        return await send_group(session, group, p)
    finally:
        session.commit_hook = None


# ------------------------------------------------------------------- download


def _open_part(part: Path, total: int) -> tuple[int, Any]:
    """(bytes already in ``part``, SHA-256 state over them); drops a part larger than ``total``."""
    digest = hashlib.sha256()
    try:
        have = part.stat().st_size
    except FileNotFoundError:
        return 0, digest
    if have > total:
        part.unlink()
        return 0, digest
    with open(part, "rb") as f:
        while block := f.read(HASH_READ):
            digest.update(block)
    return have, digest


async def download_blob(client: Session, att: Attachment, part: Path,
                        progress: Progress = _no_progress) -> None:
    """Fetch the ciphertext of ``att`` into ``part``, continuing after the bytes it
    already holds, then check its SHA-256.

    Raises:
        IntegrityError: size or hash mismatch (``part`` is deleted).
        RelayError: ``not_found`` (gone or expired), ``unavailable`` (holder unreachable).
        ConnectionLost: the connection dropped (call again to resume).
    """
    total = att.enc_size
    have, digest = await trio.to_thread.run_sync(_open_part, part, total)
    progress(have, total)
    conn = client.connection
    async with await trio.open_file(part, "ab") as f:
        while have < total:
            answer = await conn.request(MediaDownload, node_id=att.node_id,
                                        media_id=att.media_id, offset=have,
                                        length=min(CHUNK, total - have))
            if answer.size != total or not answer.data or have + len(answer.data) > total:
                await f.aclose()
                await trio.Path(part).unlink(missing_ok=True)
                raise IntegrityError(f"the relay holds {answer.size} bytes for this file, "
                                     f"the sender announced {total}; nothing was saved")
            await f.write(answer.data)
            digest.update(answer.data)
            have += len(answer.data)
            progress(have, total)
    if digest.digest() != att.sha256:
        await trio.Path(part).unlink(missing_ok=True)
        raise IntegrityError("the downloaded file does not match the SHA-256 its sender "
                             "signed into the message (altered or corrupted); nothing was saved")


def claim_name(tmp: Path, directory: Path, name: str) -> Path:
    """Give file ``tmp`` (in ``directory``) the name ``name``, or ``name (1).ext``,
    ``name (2).ext``... whichever does not exist yet; never replaces a file.

    Raises:
        OSError: no free name, or the filesystem refused.
    """
    stem, ext = Path(name).stem, Path(name).suffix
    for n in range(MAX_NAME_TRIES):
        target = directory / (name if n == 0 else f"{stem} ({n}){ext}")
        try:
            os.link(tmp, target)  # fails if target exists: no silent overwrite
        except FileExistsError:
            continue
        except OSError as exc:
            if exc.errno not in _NO_HARD_LINKS:
                raise
            # No hard links on this filesystem: reserve the name exclusively, then
            # move the file over our own empty placeholder.
            try:
                os.close(os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
            except FileExistsError:
                continue
            os.replace(tmp, target)
            return target
        tmp.unlink()
        return target
    raise FileExistsError(f"no free file name for {name!r} in {directory}")


async def save_attachment(client: Session, att: Attachment, downloads: Path, *,
                          state_home: Path, progress: Progress = _no_progress) -> Path:
    """Download, verify, decrypt and save ``att`` into ``downloads``; return the path.

    Resumable: an interrupted download keeps ``<state_home>/media/<media_id>.part``
    and the next call continues from there.

    Raises:
        IntegrityError: hash or authentication failure (nothing saved, partial data deleted).
        RelayError, ConnectionLost: as :func:`download_blob`. OSError: local files.
    """
    part = trio.Path(state_home / MEDIA_DIR / f"{att.media_id.hex()}.part")
    await part.parent.mkdir(mode=0o700, exist_ok=True)
    await trio.Path(downloads).mkdir(parents=True, exist_ok=True)
    await download_blob(client, att, Path(part), progress)
    tmp = trio.Path(downloads / f".wa-{os.urandom(6).hex()}.partial")
    try:
        try:
            size = await trio.to_thread.run_sync(decrypt_file, Path(part), Path(tmp), att.key)
        except IntegrityError:
            await part.unlink(missing_ok=True)
            raise
        if size != att.size:
            await part.unlink(missing_ok=True)
            raise IntegrityError(f"the file decrypted to {size} bytes, the sender announced "
                                 f"{att.size}; nothing was saved")
        target = await trio.to_thread.run_sync(claim_name, Path(tmp), Path(downloads),
                                               safe_name(att.name))
    finally:
        await tmp.unlink(missing_ok=True)
    await part.unlink(missing_ok=True)
    return target


def file_info(file: dict[str, Any]) -> dict[str, Any]:
    """The ``"file"`` object of ``recv --json`` for a history entry's file map:
    ``{name, size, mime, path}`` (``path`` null until saved) plus ``error`` if it failed."""
    info = {"name": file.get("name", ""), "size": file.get("size", 0),
            "mime": file.get("mime", DEFAULT_MIME), "path": file.get("path")}
    if file.get("error"):
        info["error"] = file["error"]
    return info


async def fetch_history_file(client: Session, entry: dict[str, Any], downloads: Path, *,
                             progress: Progress = _no_progress) -> dict[str, Any]:
    """Save the file of a received history ``entry`` (if not saved or failed yet) and
    record the outcome in the entry (``path``, or ``error`` for a permanent failure);
    the caller saves the state. Returns :func:`file_info` of the entry.

    A relay that is unreachable (``unavailable``) leaves the entry pending: a later
    call resumes the download.

    Raises:
        ConnectionLost: the connection dropped (the entry stays pending).
    """
    file = entry["file"]
    if file.get("path") or file.get("error"):
        return file_info(file)
    try:
        att = Attachment.from_map(file)
        path = await save_attachment(client, att, downloads, state_home=client.state.home,
                                     progress=progress)
    except (AttachmentError, IntegrityError) as exc:
        file["error"] = str(exc)
    except RelayError as exc:
        if exc.code == ErrorCode.NOT_FOUND:
            file["error"] = "the file is no longer on the relay (expired or deleted)"
        elif exc.code != ErrorCode.UNAVAILABLE:
            file["error"] = str(exc)
        else:
            log.warning("file %s: %s; will retry on the next recv", file.get("name"), exc)
    else:
        file["path"] = str(path)
    client.state.history_changed(entry)
    return file_info(file)


def pending_files(state: State) -> list[dict[str, Any]]:
    """History entries whose file is neither saved nor failed (oldest first), except
    those imported from the primary when this device was linked (``imported``: fetched
    only on request, with ``wa-cli history --download``)."""
    return [e for e in state.history
            if e.get("type") == "file" and isinstance(e.get("file"), dict)
            and not e["file"].get("path")
            and not e["file"].get("error")
            and not e["file"].get("imported")]
