"""``wa-cli recv`` through the daemon of the home (:mod:`cli.daemon`): a ``receive``
subscription printed as ``recv`` prints (the daemon renders each event; this process
writes its line). Without ``--follow`` it returns after ``--timeout`` seconds without
an event; with ``--follow`` Ctrl-C or SIGTERM end it with exit code 0."""

from __future__ import annotations

from cli.commands._common import AppContext, CliError
from cli.commands._screen import MAYBE_PREFIX
from cli.commands._signals import sigterm_interrupts
from cli.daemon.remote import Remote, RemoteError


def recv_via_daemon(app: AppContext, remote: Remote, follow: bool, timeout: float) -> None:
    """Subscribe and print events until idle (or interrupted with ``follow``).

    Raises:
        CliError: the daemon went away or refused.
    """
    shown = 0
    try:
        with sigterm_interrupts():
            try:
                remote.call("receive")
                for msg in remote.notifications(None if follow else timeout):
                    if msg.get("method") != "receive" or not isinstance(msg.get("params"), dict):
                        continue
                    shown += _print(app, msg["params"])
            except KeyboardInterrupt:
                if not follow:
                    raise
                app.stop_now()
                return
    except RemoteError as exc:
        raise CliError(f"daemon: {exc.message}") from exc
    if not follow and not shown and not app.out.json_mode:
        app.out.note("no new messages")


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
