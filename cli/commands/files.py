"""The file parts of ``wa-cli send ... --file PATH`` and ``wa-cli recv --downloads DIR``.

``send NAME --file PATH [CAPTION]`` (or ``send --group GROUP --file PATH [CAPTION]``)
encrypts and uploads the file with a progress bar on stderr (human mode on a
terminal), then sends a ``file`` message; it prints ``{"id", "status", "to" | "group",
"group_id", "file": {"name", "size", "mime"}}``. While a daemon serves the home it
goes through it (:mod:`cli.commands.files_remote`). Exit codes as ``send``: 0 once the
message may have left (a signal after that point is held back), 130 if Ctrl-C or
SIGTERM stopped it before (during the upload: nothing is sent).

``recv`` downloads, verifies and decrypts each received file into the downloads
directory (default ``<home>/downloads``) and prints the message with
``"file": {"name", "size", "mime", "path"}`` (``path`` is where it was saved;
``null`` plus ``"error"`` if it failed). A file message is printed once its download
has finished (or failed), after everything received before it; other senders'
messages behind it do not wait for it, its own sender's do (docs/cli.md).
Downloads of messages already printed that did not finish resume first, reported
as ``{"type": "file_saved", "id", "file"}``. A file that fails its
integrity check is not saved and makes ``recv`` exit 1 after printing everything.

``recv`` downloads automatically only files from contacts (or from this account's
own devices) of at most ``--auto-download`` bytes (default 25 MiB, env
``WA_AUTO_DOWNLOAD``); any other file is listed, not fetched: ``"file": {...,
"path": null, "held": REASON, "fetch": COMMAND}`` and a human line naming the
command that fetches it (``wa-cli history USER --download``).
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import click

from cli.client import Client, open_client
from cli.commands._common import (
    AppContext,
    CliError,
    UnknownName,
    failures,
    message_row,
    resolve_recipient,
    state_of,
    user_label,
)
from cli.commands._events import lists_shown
from cli.commands._signals import Guard, run_interruptible
from cli.commands.files_remote import send_file_via_daemon
from cli.daemon.remote import find_daemon
from cli.events import Message
from cli.features import media
from cli.features.payload import MAX_TEXT
from cli.output import escape, file_human, progress_bar
from cli.session.group_state import GroupError
from cli.session.state import State
from relay.protocol import is_user_id

AUTO_DOWNLOAD_MAX = 25 * 1024 * 1024
"""Largest file ``recv`` downloads by itself (from a contact), bytes."""


def send_file(app: AppContext, path: Path, *, recipient: str | None, caption: str | None,
              group: str | None) -> None:
    """Run ``send ... --file PATH``; see the module docstring. Exit codes as ``send``."""
    if group is not None:  # the one positional argument is the caption
        if caption is not None:
            raise click.UsageError("usage: wa-cli send --group GROUP --file PATH [CAPTION]")
        caption = recipient
    elif recipient is None:
        raise click.UsageError("usage: wa-cli send NAME|USER_ID --file PATH [CAPTION]")
    caption = caption or ""
    if len(caption) > MAX_TEXT:
        raise click.BadParameter(f"longer than {MAX_TEXT} characters", param_hint="CAPTION")
    source = os.path.abspath(path)
    remote = find_daemon(app.home)
    if remote is not None:
        with remote:
            return send_file_via_daemon(app, remote, source, recipient=recipient,
                                        caption=caption, group=group)
    with state_of(app) as state:
        user_id = None
        if group is None:
            user_id = resolve_recipient(state, recipient)  # type: ignore[arg-type]
        else:
            try:
                state.groups.find(group)
            except GroupError as exc:
                raise UnknownName(str(exc), "unknown_group", param_hint="--group") from exc
        guard = Guard()

        async def run() -> dict:
            async with media.Reconnecting(state, connect_timeout=app.connect_timeout,
                                         settings=app.net, opener=open_client) as rc:
                with progress_bar(app.out, f"uploading {path.name}") as bar:
                    att = await media.upload_file(rc, path, progress=bar)
                info = {"name": att.name, "size": att.size, "mime": att.mime}
                if user_id is not None:
                    result = await media.send_file(rc, user_id, att, caption, source=source,
                                                   on_commit=guard.commit)
                    return {"id": result.msg_id.hex(), "status": result.status, "to": user_id,
                            "file": info}
                g = await media.send_group_file(rc, group, att, caption,  # type: ignore[arg-type]
                                                on_commit=guard.commit)
                return {"id": g.msg_id.hex(), "status": g.status, "group": g.name,
                        "group_id": g.group_id, "file": info}

        with failures(), lists_shown(app, state):
            out = run_interruptible(run, guard=guard)
        to = escape(out["group"]) if "group" in out else user_label(state, out["to"])
    app.out.emit(out, f"sent {escape(path.name)} to {to} ({out['status']}) id {out['id']}")


def held_reason(state: State, entry: dict, auto_max: int) -> str | None:
    """Why ``recv`` does not download the file of history ``entry`` by itself (from
    someone not in the contacts, or larger than ``auto_max`` bytes), or ``None``.
    The size is the larger of the announced plaintext size and the ciphertext size,
    which is what a download fetches (a sender may announce any plaintext size up
    to it)."""
    peer = entry.get("from") or entry.get("peer") or ""
    ref = entry["file"].get("ref")
    fetched = ref.get("size") if isinstance(ref, dict) else None
    size = max(entry["file"].get("size") or 0, fetched if type(fetched) is int else 0)
    if peer != state.user_id and state.alias_of(peer) is None:
        return "from someone not in your contacts"
    if size > auto_max:
        return (f"{size} bytes to fetch (encrypted), more than the automatic download "
                f"limit of {auto_max} bytes")
    return None


def hold(state: State, entry: dict, reason: str) -> dict:
    """Mark ``entry``'s file as held (listed, not fetched; the caller saves) and return
    its ``recv --json`` info with ``held`` and ``fetch`` (the command that fetches it)."""
    entry["file"]["held"] = reason
    state.history_changed(entry)
    peer = entry.get("peer") or ""
    who = (state.alias_of(peer) or peer) if is_user_id(peer) else ""
    fetch = f"wa-cli history {who} --download" if who else "wa-cli history --download"
    return {**media.file_info(entry["file"]), "held": reason, "fetch": fetch}


class FileReceiver:
    """Downloads the files of ``recv`` and prints their messages (see the module docstring).

    Args:
        app: the command context (output mode).
        state: the open device state.
        downloads: destination directory.
    """

    def __init__(self, app: AppContext, state: State, downloads: Path,
                 auto_max: int = AUTO_DOWNLOAD_MAX) -> None:
        self._app = app
        self._state = state
        self._downloads = downloads
        self._auto_max = auto_max
        self.failed: list[str] = []

    def held(self, entry: dict) -> str | None:
        """Why the file of history ``entry`` is not downloaded automatically, or ``None``."""
        return held_reason(self._state, entry, self._auto_max)

    def _hold(self, entry: dict, reason: str) -> dict:
        return hold(self._state, entry, reason)

    async def _fetch(self, client: Client, entry: dict) -> dict:
        name = entry["file"].get("name") or "file"
        with progress_bar(self._app.out, f"downloading {name}") as bar:
            info = await media.fetch_history_file(client, entry, self._downloads, progress=bar)
        await self._state.asave()
        if info.get("error"):
            self.failed.append(f"{name}: {info['error']}")
        return info

    async def resume_pending(self, client: Client, skip: frozenset[str] = frozenset()) -> None:
        """Download the files of earlier messages that are not saved yet, except those of
        the message ids (hex) in ``skip`` (still waiting in the inbox: their message
        line reports the file)."""
        for entry in media.pending_files(self._state):
            if entry["id"] in skip or self.held(entry) is not None:
                continue
            info = await self._fetch(client, entry)
            if info.get("path") or info.get("error"):
                self._app.out.emit({"type": "file_saved", "id": entry["id"], "file": info},
                                   file_human(info))

    async def fetch(self, client: Client, event: Message) -> dict | None:
        """Download the file of ``event`` (a ``file`` message) into the downloads
        directory, recording the outcome in its history entry; returns the file info
        of ``recv --json`` (``None`` if the message is no longer in local history).

        Raises:
            ConnectionLost: the connection dropped (the file stays pending).
        """
        entry = self._state.find_history(event.msg_id.hex())
        if entry is None or not isinstance(entry.get("file"), dict):
            return None
        reason = self.held(entry)
        if reason is not None:
            info = self._hold(entry, reason)
            await self._state.asave()
            return info
        return await self._fetch(client, entry)

    def row(self, event: Message, info: dict | None) -> tuple[dict, str]:
        """The ``--json`` object and the human row of a file message with its file info."""
        return file_row(self._state, event, info)

    def check(self) -> None:
        """Raise :class:`CliError` (exit 1) if a file failed for good."""
        if self.failed:
            raise CliError("not saved: " + "; ".join(self.failed))


def file_row(state: State, event: Message, info: dict | None) -> tuple[dict, str]:
    """The ``recv --json`` object and the human row of the file message ``event`` with
    ``info``, the ``"file"`` object of ``recv --json`` (``None``: the message is no
    longer in the history): the message line (``(file)`` for an empty caption) and,
    with ``info``, a second line saying where the file was saved or why not."""
    obj, _ = message_row(state, event)
    obj["file"] = info
    _, human = message_row(state, dataclasses.replace(event, text=event.text or "(file)"))
    if info is not None:
        human += "\n  " + file_human(info)
    return obj, human


def announced_file_row(state: State, event: Message) -> tuple[dict, str]:
    """How the daemon announces the file message ``event`` to ``receive`` subscribers
    (docs/jsonrpc.md): :func:`file_row` without the file's line (a subscriber that
    downloads it adds that line), its ``"file"`` the history's ``{"name", "size",
    "mime", "path"}`` (``path`` null until saved; ``None`` if the message is no
    longer in the history)."""
    entry = state.find_history(event.msg_id.hex())
    file = entry.get("file") if entry is not None else None
    obj, human = file_row(state, event, None)
    obj["file"] = media.file_info(file) if isinstance(file, dict) else None
    return obj, human


def default_downloads(app: AppContext, downloads: Path | None) -> Path:
    """``--downloads`` or ``<home>/downloads``."""
    return downloads if downloads is not None else app.home / media.DOWNLOADS_DIR

