"""The file commands through the daemon of the home (:mod:`cli.daemon.methods_files`):
``wa-cli send ... --file PATH`` and ``wa-cli history --download`` while ``wa-cli daemon``
serves the home.

``send --file`` makes two calls: ``upload`` (interruptible: Ctrl-C or SIGTERM during
it exits 130 and the daemon, finding its caller gone, cancels the upload; nothing is
sent) then ``sendFile`` with the upload's token (the point of no return: signals are
held until the answer is in, and the command exits 0). Both print what the command
prints without a daemon. The daemon reports the transfer's bytes in ``progress``
notifications, drawn as the same progress bar (:func:`cli.output.progress_bar`:
human mode on a terminal only).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from cli.commands._common import AppContext, CliError, UnknownName
from cli.commands._signals import sigterm_interrupts
from cli.daemon.jsonrpc import USAGE_ERROR
from cli.daemon.remote import Remote, RemoteError
from cli.output import escape, progress_bar

__all__ = ["download_via_daemon", "fetch_received", "send_file_via_daemon"]


def _drawing(bar: Callable[[int, int], None]) -> Callable[[dict], bool]:
    """An ``on_notification`` for :meth:`Remote.call` that draws ``progress`` on ``bar``
    (and leaves the other notifications, e.g. ``receive``, queued)."""

    def on_notification(msg: dict) -> bool:
        params = msg.get("params")
        if msg.get("method") != "progress" or not isinstance(params, dict):
            return False
        done, total = params.get("done"), params.get("total")
        if isinstance(done, int) and isinstance(total, int):
            bar(done, total)
        return True

    return on_notification


def _failed(exc: RemoteError, hint: str) -> Exception:
    if exc.code == USAGE_ERROR:
        reason = (exc.data or {}).get("reason", "usage")
        if reason in ("unknown_contact", "unknown_group"):
            return UnknownName(exc.message, reason, param_hint=hint)
    return CliError(f"daemon: {escape(exc.message)}")


def send_file_via_daemon(app: AppContext, remote: Remote, source: str, *,
                         recipient: str | None, caption: str, group: str | None) -> None:
    """Upload ``source`` (absolute path) and send it to ``recipient`` or ``group`` through
    the daemon; print as ``send --file`` does.

    Raises:
        UnknownName: (exit 2) unknown contact or group.
        CliError: (exit 1) the daemon refused or went away.
        KeyboardInterrupt: (exit 130) a signal came during the upload (nothing sent).
    """
    target = {"to": recipient} if group is None else {"group": group}
    hint = "NAME|USER_ID" if group is None else "--group"
    name = Path(source).name
    try:
        with sigterm_interrupts(), progress_bar(app.out, f"uploading {name}") as bar:
            up = remote.call("upload", {**target, "path": source, "progress": True},
                             timeout=None, on_notification=_drawing(bar))
        out = remote.call("sendFile", {**target, "upload": up["upload"], "caption": caption},
                          shielded=True)
    except RemoteError as exc:
        raise _failed(exc, hint) from exc
    to = escape(out["group"]) if "group" in out else escape(recipient or out["to"])
    app.out.emit(out, f"sent {escape(name)} to {to} ({out['status']}) id {out['id']}")


def download_via_daemon(app: AppContext, remote: Remote, files: list[tuple[str, str]],
                        downloads: Path) -> None:
    """Have the daemon fetch the files of the messages ``files`` (``(msg_id_hex, name)``)
    into ``downloads``; one progress bar each.

    Raises:
        CliError: (exit 1) the daemon refused or went away.
        KeyboardInterrupt: (exit 130) a signal stopped it (a partial download resumes
            next time).
    """
    try:
        for msg_id, name in files:
            with sigterm_interrupts(), progress_bar(app.out, f"downloading {name}") as bar:
                remote.call("download", {"id": msg_id, "dir": str(downloads.absolute()),
                                         "progress": True},
                            timeout=None, on_notification=_drawing(bar))
    except RemoteError as exc:
        raise _failed(exc, "NAME|USER_ID") from exc


def fetch_received(app: AppContext, remote: Remote, msg_id: str, name: str, downloads: Path,
                   auto_max: int) -> dict | None:
    """``recv`` through the daemon: have it download the file of the received message
    ``msg_id`` by ``recv``'s rules (contacts only, at most ``auto_max`` bytes; otherwise
    held) into ``downloads``; returns the ``"file"`` object of ``recv --json``, ``None``
    if the message is no longer in the device's history.

    Raises:
        RemoteError: the daemon went away or refused otherwise.
    """
    try:
        with progress_bar(app.out, f"downloading {name}") as bar:
            return remote.call("download", {"id": msg_id, "dir": str(downloads.absolute()),
                                            "progress": True, "auto_max": auto_max},
                               timeout=None, on_notification=_drawing(bar))
    except RemoteError as exc:
        if exc.code == USAGE_ERROR and (exc.data or {}).get("reason") == "unknown_message":
            return None
        raise
