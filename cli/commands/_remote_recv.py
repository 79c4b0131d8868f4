"""``wa-cli recv`` through the daemon of the home (:mod:`cli.daemon`): a ``receive``
subscription printed as ``recv`` prints (the daemon renders each event; this process
writes its line). Without ``--follow`` it returns after ``--timeout`` seconds without
an event; with ``--follow`` Ctrl-C or SIGTERM end it with exit code 0.

Exactly once on screen, as without a daemon (docs/cli.md): the subscription confirms
(``receive {"confirm": true}``, docs/jsonrpc.md), so the daemon marks an event shown
only once this process answers ``shown`` for it, after its line was written and
taken by the reader of stdout (:mod:`cli.commands.linesink`). An event not printed
(interrupted during its file's download, or the reader closed stdout) is answered
``"taken": false`` and waits for the next ``recv``; one this process was killed
while printing comes back flagged "maybe shown before"."""

from __future__ import annotations

import contextlib
import sys
from dataclasses import dataclass, field
from pathlib import Path

from cli.commands._common import AppContext, CliError
from cli.commands._screen import MAYBE_PREFIX
from cli.commands._signals import sigterm_interrupts
from cli.commands.files_remote import fetch_received
from cli.commands.linesink import LineSink, ReaderGone, drop_stdout
from cli.daemon.remote import DaemonGone, Remote, RemoteError
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
        CliError: the daemon went away (it stopped: exit 1, saying to run ``recv``
            again) or refused; without ``follow``, also after
            everything was printed if a file failed its integrity check.
    """
    shown = 0
    sink = LineSink(sys.stdout)
    try:
        with sigterm_interrupts():
            try:
                remote.call("receive", {"confirm": True})
                for msg in remote.notifications(None if follow else timeout):
                    if msg.get("method") != "receive" or not isinstance(msg.get("params"), dict):
                        continue
                    params = msg["params"]
                    try:
                        printed = _show(app, remote, params, files, sink)
                    except ReaderGone:
                        _answer(remote, params, taken=False)
                        _output_closed(app)
                        return
                    shown += printed
                    _answer(remote, params, taken=True)
            except KeyboardInterrupt:
                if not follow:
                    raise
                app.stop_now()
                return
    except DaemonGone as exc:  # e.g. stopped with SIGTERM while recv --follow went through it
        raise CliError(f"daemon: {exc.message} (it stopped); run 'wa-cli recv' again: it "
                       "runs on its own now, or through a new daemon") from exc
    except RemoteError as exc:
        raise CliError(f"daemon: {exc.message}") from exc
    if not follow and not shown and not app.out.json_mode:
        app.out.note("no new messages")
    if files is not None and files.failed:
        raise CliError("not saved: " + "; ".join(files.failed))


def _show(app: AppContext, remote: Remote, params: dict, files: Files | None,
          sink: LineSink) -> int:
    """Fetch the event's file (if any), print its line and wait until the reader took it;
    returns the lines shown on stdout (0 or 1). Answers the daemon itself when
    interrupted: ``"taken": false`` before the line's write began, ``true`` if it was
    written and taken; otherwise nothing (the daemon then flags it "maybe shown before").

    Raises:
        ReaderGone: the reader closed stdout first (the line was not taken).
        KeyboardInterrupt: Ctrl-C or SIGTERM (answered as above).
    """
    writing = False
    printed = None
    try:
        if files is not None:
            _with_file(app, remote, params, files)
        writing = True
        try:
            printed = _print(app, params)
        except BrokenPipeError as exc:
            raise ReaderGone("the reader closed the output stream") from exc
        sink.wait_taken()
        return printed
    except KeyboardInterrupt:
        if not writing:
            _answer(remote, params, taken=False)
        elif printed is not None:
            with contextlib.suppress(OSError):
                if not sink.unread():
                    _answer(remote, params, taken=True)
        raise


def _answer(remote: Remote, params: dict, *, taken: bool) -> None:
    """Tell the daemon whether the event of ``params`` was shown (``shown``)."""
    with contextlib.suppress(RemoteError):  # the daemon is gone: it flags what it handed out
        remote.call("shown", {"subscription": params.get("subscription"), "n": params.get("n"),
                              "taken": taken})


def _output_closed(app: AppContext) -> None:
    """stdout was closed by its reader: quiet exit 0, as ``recv`` without a daemon."""
    drop_stdout()
    with contextlib.suppress(BrokenPipeError):
        app.out.note("the output was closed; what was not shown waits for the next "
                     "'wa-cli recv'")


def _with_file(app: AppContext, remote: Remote, params: dict, files: Files) -> None:
    """Fetch the file of a ``file`` message event and add it to ``params`` (the
    ``"file"`` object and a second human line)."""
    obj = params.get("event")
    if not isinstance(obj, dict) or obj.get("type") != "file" or not isinstance(obj.get("id"),
                                                                                 str):
        return
    name = str((obj.get("file") or {}).get("name") or "file")
    info = fetch_received(app, remote, obj["id"], name, files.downloads, files.auto_max)
    obj["file"] = info
    if info is None:  # no longer in the history: as recv without a daemon
        return
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
