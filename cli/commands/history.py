"""``wa-cli history [NAME|USER_ID] [--limit N] [--download [--downloads DIR]]``: messages
kept on this device (no network unless ``--download``).

A file message shows its file: ``"file": {"name", "size", "mime", "path"}`` with
``--json`` (``path`` null while not downloaded, plus ``"error"`` if it failed for
good), or a second line in human mode. History that a linked device got from the
primary carries the file's reference but never the primary's local path: such files
are "not downloaded" until ``--download`` fetches them from the relay (if it still
has them).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import click

from cli.client import open_client
from cli.commands._common import AppContext, failures, json_option, message_row, state_of
from cli.commands._signals import run_interruptible
from cli.commands.files_remote import download_via_daemon
from cli.commands.history_view import decorate, export
from cli.daemon.remote import find_daemon
from cli.events import Message
from cli.features import media
from cli.features.effects import sweep
from cli.output import escape, progress_bar
from cli.session.state import State, StateError


def _message(state: State, entry: dict, groups: dict[str, str]) -> Message:
    declared = entry.get("from_name", "")
    group_id = entry.get("group_id")
    return Message(bytes.fromhex(entry["id"]), entry.get("from", ""), entry.get("from_device", 0),
                   entry.get("direction", "in"), entry.get("peer", ""), entry.get("ts", 0),
                   entry.get("type", "text"), entry.get("text", ""), declared, declared,
                   groups.get(group_id, "?") if group_id else None, group_id)


def _file_line(file: dict) -> str:
    """The human line of a history entry's file: name, size, type, and where it is."""
    info = media.file_info(file)
    what = f"file {escape(str(info['name'] or '?'))} ({info['size']} bytes, {escape(info['mime'])})"
    if info["path"]:
        return f"{what} saved to {escape(str(info['path']))}"
    if info.get("error"):
        return f"{what} NOT saved: {escape(str(info['error']))}"
    if file.get("imported"):
        return f"{what} not downloaded (fetch it with 'wa-cli history --download')"
    return f"{what} not downloaded yet (will retry on the next recv)"


def _row(state: State, entry: dict, groups: dict[str, str]) -> tuple[dict, str]:
    """The ``--json`` object and human row of a history entry (see the module docstring),
    with the effects of later messages (:func:`cli.history_view.decorate`)."""
    msg = _message(state, entry, groups)
    file = entry.get("file") if entry.get("type") == "file" else None
    if entry.get("deleted"):
        obj, _ = message_row(state, msg)
        _, human = message_row(state, dataclasses.replace(msg, text="(deleted)"))
        return decorate(state, entry, obj, human)
    if not isinstance(file, dict):
        return decorate(state, entry, *message_row(state, msg))
    obj, _ = message_row(state, msg)
    _, human = message_row(state, dataclasses.replace(msg, text=msg.text or "(file)"))
    obj["file"] = media.file_info(file)
    return decorate(state, entry, obj, human + "\n  " + _file_line(file))


async def _download(state: State, entries: list[dict], downloads: Path, app: AppContext) -> None:
    """Fetch the files of ``entries`` that are not saved yet (imported ones included)."""
    todo = [e for e in entries if e.get("type") == "file" and isinstance(e.get("file"), dict)
            and not e["file"].get("path") and not e["file"].get("error")]
    if not todo:
        return
    async with media.Reconnecting(state, connect_timeout=app.connect_timeout,
                                   settings=app.net, opener=open_client) as rc:
        for entry in todo:
            name = entry["file"].get("name") or "file"
            with progress_bar(app.out, f"downloading {name}") as bar:
                await rc.run(lambda client, entry=entry, bar=bar: media.fetch_history_file(
                    client, entry, downloads, progress=bar))
            await state.asave()


def _download_via_daemon(app: AppContext, remote, contact: str | None, limit: int,  # noqa: ANN001
                         downloads: Path | None) -> None:
    with state_of(app, readonly=True) as state:
        peer = None
        if contact is not None:
            try:
                peer = state.resolve(contact)
            except StateError as exc:
                raise click.BadParameter(str(exc), param_hint="NAME|USER_ID") from exc
        entries = [e for e in state.history if not e.get("held")
                   and (peer is None or e.get("peer") == peer)][-limit:]
        todo = [(e["id"], str(e["file"].get("name") or "file")) for e in entries
                if e.get("type") == "file" and isinstance(e.get("file"), dict)
                and not e["file"].get("path") and not e["file"].get("error")]
    target = downloads if downloads is not None else app.home / media.DOWNLOADS_DIR
    download_via_daemon(app, remote, todo, target)


@click.command()
@click.argument("contact", metavar="[NAME|USER_ID]", required=False)
@click.option("--limit", type=click.IntRange(min=1), default=50, show_default=True,
              help="Show at most this many of the newest messages.")
@click.option("--download", is_flag=True,
              help="First fetch the files of the shown messages that are not downloaded "
                   "(needs the relay).")
@click.option("--downloads", type=click.Path(file_okay=False, path_type=Path),
              help="Where --download saves files  [default: HOME/downloads]")
@click.option("--export", "export_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Write every stored message of the selection (not only the --limit "
                   "newest) to this file as one JSON document, and print nothing else.")
@json_option
@click.pass_obj
def history(app: AppContext, contact: str | None, limit: int, download: bool,
            downloads: Path | None, export_path: Path | None) -> None:
    """Show recent messages stored on this device, oldest first (also those a
    linked device received in its history sync). With --json each row has the
    shape of a 'wa-cli recv --json' line. File messages show the file's name, size
    and type, and where it was saved (or that it is not downloaded). While 'wa-cli
    daemon' serves this --home, --download goes through it."""
    if download and export_path is None:
        remote = find_daemon(app.home)
        if remote is not None:  # the daemon fetches; this process then reads beside it
            with remote:
                _download_via_daemon(app, remote, contact, limit, downloads)
            download = False
    with state_of(app, readonly=not download) as state:
        peer = None
        if contact is not None:
            try:
                peer = state.resolve(contact)
            except StateError as exc:
                raise click.BadParameter(str(exc), param_hint="NAME|USER_ID") from exc
        # disappearing messages whose time is up: gone from the output now; read-only
        # (beside a daemon or recv --follow) the next writing command drops them on disk
        if sweep(state) and not state.readonly:
            with failures():
                state.save()
        selected = [e for e in state.history if not e.get("held")
                    and (peer is None or e.get("peer") == peer)]
        if export_path is not None:
            groups = {r.state.hex_id: r.state.name for r in state.groups.groups.values()}
            with failures():
                n = export(export_path, state, [_row(state, e, groups)[0] for e in selected])
            app.out.emit({"exported": n, "path": str(export_path)},
                         f"exported {n} message{'s' * (n != 1)} to {escape(str(export_path))}")
            return
        entries = selected[-limit:]
        if download:
            target = downloads if downloads is not None else app.home / media.DOWNLOADS_DIR
            with failures():
                run_interruptible(_download, state, entries, target, app)
        groups = {r.state.hex_id: r.state.name for r in state.groups.groups.values()}
        rows = [_row(state, e, groups) for e in entries]
    for obj, human in rows:
        app.out.emit(obj, human)
    if not rows and not app.out.json_mode:
        app.out.note("no messages stored on this device")
