"""``wa-cli recv`` through the daemon of the home (:mod:`cli.daemon`): a ``receive``
subscription printed as ``recv`` prints (the daemon renders each event; this process
writes its line). Without ``--follow`` it returns after ``--timeout`` seconds without
an event; with ``--follow`` Ctrl-C or SIGTERM end it with exit code 0."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from cli.commands._common import AppContext, CliError
from cli.commands._screen import MAYBE_PREFIX
from cli.commands._signals import sigterm_interrupts
from cli.commands.files_remote import fetch_received
from cli.daemon.remote import Remote, RemoteError
from cli.output import file_human


@dataclass
class Files:
    """Where and by which rule ``recv`` through the daemon downloads received files
    (``--downloads``, ``--auto-download``); ``failed``: files that failed for good."""

    downloads: Path
    auto_max: int
    failed: list[str] = field(default_factory=list)


def recv_via_daemon(app: AppContext, remote: Remote, follow: bool, timeout: float,
                    files: Files | None = None) -> None:
    """Subscribe and print events until idle (or interrupted with ``follow``). With
    ``files``, the daemon downloads each received file (:func:`fetch_received`) before
    its message is printed, with the file's outcome, as ``recv`` does without a daemon.

    Raises:
        CliError: the daemon went away or refused; without ``follow``, also after
            everything was printed if a file failed its integrity check.
    """
    shown = 0
    try:
        with sigterm_interrupts():
            try:
                remote.call("receive")
                for msg in remote.notifications(None if follow else timeout):
                    if msg.get("method") != "receive" or not isinstance(msg.get("params"), dict):
                        continue
                    params = msg["params"]
                    if files is not None:
                        _with_file(app, remote, params, files)
                    shown += _print(app, params)
            except KeyboardInterrupt:
                if not follow:
                    raise
                app.stop_now()
                return
    except RemoteError as exc:
        raise CliError(f"daemon: {exc.message}") from exc
    if not follow and not shown and not app.out.json_mode:
        app.out.note("no new messages")
    if files is not None and files.failed:
        raise CliError("not saved: " + "; ".join(files.failed))


def _with_file(app: AppContext, remote: Remote, params: dict, files: Files) -> None:
    """Fetch the file of a ``file`` message event and add it to ``params`` (the
    ``"file"`` object and a second human line)."""
    obj = params.get("event")
    if not isinstance(obj, dict) or obj.get("type") != "file" or not isinstance(obj.get("id"),
                                                                                 str):
        return
    name = str((obj.get("file") or {}).get("name") or "file")
    info = fetch_received(app, remote, obj["id"], name, files.downloads, files.auto_max)
    if info is None:
        return
    obj["file"] = info
    params["text"] = str(params.get("text", "")) + "\n  " + file_human(info)
    if info.get("error"):
        files.failed.append(f"{info.get('name')}: {info['error']}")


def _print(app: AppContext, params: dict) -> int:
    obj, text, note = params.get("event"), str(params.get("text", "")), bool(params.get("note"))
    maybe = bool(params.get("maybe_shown"))
    if app.out.json_mode and isinstance(obj, dict):
        app.out.emit({**obj, "maybe_shown": True} if maybe else obj, "")
        return int(not note)
    text = (MAYBE_PREFIX if maybe else "") + text
    if note or app.out.json_mode:
        app.out.note(text)
        return 0
    app.out.emit({}, text)
    return 1
