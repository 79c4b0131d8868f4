"""The daemon's file methods (docs/jsonrpc.md, "Files"): ``upload``, ``sendFile`` and
``download``, registered into :data:`cli.daemon.methods.METHODS`.

The transfers run over the daemon's connection (:class:`cli.daemon.core.Device`)
through a :class:`~cli.session.reconnecting.Reconnecting` whose "reconnect" waits
for the daemon's own connection to come back, so an upload or download resumes
after an outage as it does in ``wa-cli send --file``. Paths are the daemon's: it
reads and writes files as the user it runs as (absolute paths only).

With ``"progress": true`` the calling connection gets ``progress`` notifications
(``{"transfer": "upload"|"download", "name", "done", "total"}``, bytes, at most about
:data:`PROGRESS_EVERY` seconds apart) while the transfer runs. A transfer whose
caller went away (a notification cannot be written) is cancelled: ``wa-cli send
--file`` interrupted by Ctrl-C during its upload sends nothing.

``upload`` keeps the uploaded attachment in the daemon (at most :data:`MAX_UPLOADS`,
the oldest dropped) under a token that ``sendFile`` takes once: the command line
uploads first (interruptible) and then sends (the point of no return).
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import trio

from cli.commands.files import held_reason, hold
from cli.daemon.core import Device
from cli.daemon.jsonrpc import INVALID_PARAMS, RUNTIME_ERROR, USAGE_ERROR, Peer, RpcError
from cli.daemon.methods import errors, method, recipient
from cli.errors import ConnectionFailed
from cli.features import media
from cli.features.attachment import Attachment
from cli.features.payload import MAX_TEXT
from cli.session.session import Session
from cli.session.taskgroups import unwrap_single

__all__ = ["MAX_UPLOADS", "PROGRESS_EVERY"]

MAX_UPLOADS = 16  # uploaded attachments kept for a later sendFile
PROGRESS_EVERY = 0.1  # seconds between two progress notifications of one transfer
CONNECT_WAIT = 10.0  # seconds a transfer waits for the daemon's connection


def _text(params: dict, key: str, *, required: bool = True) -> str | None:
    value = params.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, str):
        raise RpcError(INVALID_PARAMS, f"{key!r} must be a string")
    return value


def _abs_path(params: dict, key: str, *, required: bool = True) -> Path | None:
    value = _text(params, key, required=required)
    if value is None:
        return None
    if not os.path.isabs(value):
        raise RpcError(INVALID_PARAMS, f"{key!r} must be an absolute path")
    return Path(value)


def _reconnecting(device: Device) -> media.Reconnecting:
    """A :class:`Reconnecting` over the daemon's connection. While the daemon has no
    connection, the transfer waits for it at most :data:`CONNECT_WAIT` s in all (from
    the first try that found none; a connection handed out starts the count afresh),
    then fails with -32000 ``no connection to the home node right now`` at once: the
    daemon's own reconnection is the retrying, so the transfer's retries (its
    ``attempts``) are not spent waiting 10 s each."""
    outage_ends: float | None = None  # trio time the current wait for a connection ends

    @asynccontextmanager
    async def current(state, *, connect_timeout: float, **_: Any) -> AsyncIterator[Session]:  # noqa: ANN001
        nonlocal outage_ends
        if outage_ends is None:
            outage_ends = trio.current_time() + connect_timeout
        try:
            client = await device.live(max(0.0, outage_ends - trio.current_time()))
        except ConnectionFailed as exc:
            raise RpcError(RUNTIME_ERROR, f"{exc} right now") from exc
        outage_ends = None
        yield client

    return media.Reconnecting(device.state, connect_timeout=CONNECT_WAIT, opener=current)


def _quiet(done: int, total: int) -> None:
    pass


class _Reporter:
    """The ``progress`` callback of one transfer: hands the newest ``(done, total)`` to
    :meth:`run`, which writes notifications to the caller and cancels ``scope`` (the
    transfer) if the caller is gone."""

    def __init__(self, peer: Peer, transfer: str, name: str, scope: trio.CancelScope) -> None:
        self._peer, self._transfer, self._name, self._scope = peer, transfer, name, scope
        self._latest: tuple[int, int] | None = None
        self._wake = trio.Event()
        self.gone = False

    def __call__(self, done: int, total: int) -> None:
        self._latest = (done, total)
        self._wake.set()

    async def run(self) -> None:
        """Write the newest progress at most every :data:`PROGRESS_EVERY` s until cancelled."""
        while True:
            await self._wake.wait()
            if not await self.flush():
                return
            await trio.sleep(PROGRESS_EVERY)

    async def flush(self) -> bool:
        """Write the newest progress if not written yet; ``False`` (and the transfer
        cancelled) if the caller is gone."""
        if not self._wake.is_set():
            return True
        self._wake = trio.Event()
        done, total = self._latest  # type: ignore[misc]
        if await self._peer.notify("progress", {"transfer": self._transfer, "name": self._name,
                                                "done": done, "total": total}):
            return True
        self.gone = True
        self._scope.cancel()
        return False


async def _transfer(peer: Peer, params: dict, transfer: str, name: str, fn) -> Any:  # noqa: ANN001
    """``await fn(progress)`` with ``progress`` notifications if ``params["progress"]``;
    an error answer if the caller went away meanwhile."""
    progress = params.get("progress", False)
    if not isinstance(progress, bool):
        raise RpcError(INVALID_PARAMS, "'progress' must be true or false")
    with trio.CancelScope() as scope:
        reporter = _Reporter(peer, transfer, name, scope)
        with unwrap_single():  # fn's error as itself, for errors() and the answer
            async with trio.open_nursery() as nursery:
                if progress:
                    nursery.start_soon(reporter.run)
                result = await fn(reporter if progress else _quiet)
                nursery.cancel_scope.cancel()
        if progress:
            await reporter.flush()  # the last one (100%), if the pacing held it back
        return result
    raise RpcError(RUNTIME_ERROR, f"the {transfer} was cancelled: its caller went away")


def _file(att: Attachment) -> dict:
    return {"name": att.name, "size": att.size, "mime": att.mime}


async def _upload(device: Device, peer: Peer, params: dict, path: Path) -> Attachment:
    if not await trio.Path(path).is_file():
        raise RpcError(USAGE_ERROR, f"not a readable file: {path}", {"reason": "bad_file"})
    rc = _reconnecting(device)
    async with rc:
        with errors():
            return await _transfer(peer, params, "upload", path.name,
                                   lambda progress: media.upload_file(rc, path,
                                                                      progress=progress))


@method("upload")
async def upload(device: Device, peer: Peer, params: dict) -> dict:
    """``{"path": ABS_PATH, "progress"?: bool, "to"? | "group"?}`` -> ``{"upload": TOKEN,
    "file": {"name", "size", "mime"}}``: encrypt the file and upload it to the home
    node, for a later ``sendFile`` with ``"upload": TOKEN`` (nothing is sent yet). A
    ``to`` or ``group`` given is checked first (an unknown one fails before uploading)."""
    path = _abs_path(params, "path")
    if "to" in params or "group" in params:
        recipient(device, params)
    att = await _upload(device, peer, params, path)  # type: ignore[arg-type]
    token = os.urandom(12).hex()
    uploads = device.uploads
    uploads[token] = att
    while len(uploads) > MAX_UPLOADS:
        uploads.pop(next(iter(uploads)))
    return {"upload": token, "file": _file(att)}


@method("sendFile")
async def send_file(device: Device, peer: Peer, params: dict) -> dict:
    """``{"to": NAME_OR_USER_ID | "group": NAME_OR_ID, "path": ABS_PATH | "upload": TOKEN,
    "caption"?: TEXT, "progress"?: bool}`` -> ``{"id", "status": "stored"|"queued",
    "to" | "group", "group_id", "file": {"name", "size", "mime"}}`` (as ``wa-cli send
    --file --json``). With ``path`` it uploads first (see ``upload``)."""
    caption = _text(params, "caption", required=False) or ""
    if len(caption) > MAX_TEXT:
        raise RpcError(USAGE_ERROR, f"caption is longer than {MAX_TEXT} characters",
                       {"reason": "bad_text"})
    user_id, group = recipient(device, params)
    token, path = _text(params, "upload", required=False), _abs_path(params, "path",
                                                                      required=False)
    if (token is None) == (path is None):
        raise RpcError(INVALID_PARAMS, "give either 'path' or 'upload'")
    if token is not None:
        att = device.uploads.pop(token, None)
        if att is None:
            raise RpcError(USAGE_ERROR, "unknown or already used upload token",
                           {"reason": "unknown_upload"})
        source = None
    else:
        att = await _upload(device, peer, params, path)  # type: ignore[arg-type]
        source = str(path)
    rc = _reconnecting(device)
    async with rc:
        with errors():
            if user_id is not None:
                result = await media.send_file(rc, user_id, att, caption, source=source)
                answer = {"id": result.msg_id.hex(), "status": result.status, "to": user_id}
            else:
                g = await media.send_group_file(rc, group, att, caption)  # type: ignore[arg-type]
                answer = {"id": g.msg_id.hex(), "status": g.status, "group": g.name,
                          "group_id": g.group_id}
            await device.state.asave()
    return {**answer, "file": _file(att)}


@method("download")
async def download(device: Device, peer: Peer, params: dict) -> dict:
    """``{"id": MSG_ID, "dir"?: ABS_PATH, "progress"?: bool, "auto_max"?: BYTES}`` -> the
    ``"file"`` object of ``recv --json`` (``{"name", "size", "mime", "path"}``, ``path``
    null if it could not be fetched now, plus ``"error"`` for a permanent failure):
    fetch, verify and decrypt the file of a received (or imported) file message into
    ``dir`` (default ``HOME/downloads``); a file already saved is not fetched again.
    With ``auto_max`` the rules of ``recv``'s automatic downloads apply: a file from
    someone not in the contacts, or larger than ``auto_max`` bytes, is not fetched but
    marked held (``"path": null, "held": REASON, "fetch": COMMAND``)."""
    msg_id = _text(params, "id")
    entry = device.state.find_history(msg_id.lower())  # type: ignore[union-attr]
    if entry is None or entry.get("type") != "file" or not isinstance(entry.get("file"), dict):
        raise RpcError(USAGE_ERROR, f"no file message {msg_id} in this device's history",
                       {"reason": "unknown_message"})
    target = _abs_path(params, "dir", required=False) or device.state.home / media.DOWNLOADS_DIR
    auto_max = params.get("auto_max")
    if auto_max is not None:
        if not isinstance(auto_max, int) or isinstance(auto_max, bool) or auto_max < 0:
            raise RpcError(INVALID_PARAMS, "'auto_max' must be a non-negative integer")
        file = entry["file"]
        if not (file.get("path") or file.get("error")):
            reason = held_reason(device.state, entry, auto_max)
            if reason is not None:
                info = hold(device.state, entry, reason)
                await device.state.asave()
                return info
    name = str(entry["file"].get("name") or "file")
    async with _one_download(device, entry):
        rc = _reconnecting(device)
        async with rc:
            with errors():
                info = await _transfer(peer, params, "download", name, lambda progress: rc.run(
                    lambda client: media.fetch_history_file(client, entry, target,
                                                            progress=progress)))
                await device.state.asave()
    return info


@asynccontextmanager
async def _one_download(device: Device, entry: dict) -> AsyncIterator[None]:
    """Hold the download of the blob of ``entry`` (a file history entry): callers that
    download the same blob at once (two ``history --download``, or a message and
    another one forwarding the same file) take turns, so its ``.part`` file has one
    writer (two appending to it at once made it fail authentication, which marked
    the message failed for good); the second then finds the file saved."""
    ref = entry["file"].get("ref")
    media_id = ref.get("media_id") if isinstance(ref, dict) else None
    key = media_id if isinstance(media_id, bytes | str) else entry.get("id")
    locks = device.downloading
    lock = locks.setdefault(key, trio.Lock())
    try:
        async with lock:
            yield
    finally:
        if not lock.locked() and not lock.statistics().tasks_waiting:
            locks.pop(key, None)
