"""Running a changing command through the daemon of its ``--home`` (docs/jsonrpc.md).

A routed command has one *core*, ``async core(state, out, connect, **params)``
(``async with connect() as client`` when it needs the network; ``await
state.asave()`` to save), which checks its parameters, changes the state and writes
its results to ``out``
(``emit``, ``heading``, ``note``, as :class:`cli.output.Output`). Without a daemon the
command runs the core here, on the home it locks (:func:`run_routed`); with one, it
calls the core's JSON-RPC method (:mod:`cli.daemon.methods_more`), where the core runs
on the daemon's state and connection with a :class:`Recorder` as ``out``, and prints
the recorded results (:func:`replay`), with the same exit codes (usage errors 2,
runtime failures 1). The notes the core writes before its first result come as
``note`` notifications while it runs (``"stream": true``) and are printed at once, so
the output has the order it has without a daemon (``devices approve``'s "waiting"
note while it waits).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager, ExitStack
from typing import Any

import click

from cli.client import Client
from cli.commands._common import AppContext, CliError, UnknownName, failures, state_of
from cli.commands._events import lists_shown
from cli.commands._signals import run_interruptible
from cli.daemon.jsonrpc import USAGE_ERROR
from cli.daemon.remote import RemoteError, find_daemon
from cli.output import Output, escape

__all__ = ["Connect", "Recorder", "call_daemon", "replay", "run_routed"]

Connect = Callable[[], AbstractAsyncContextManager[Client]]
"""Opens (or lends) a connected client: ``async with connect() as client``."""


class Recorder:
    """An :class:`~cli.output.Output` that keeps what a core writes, for a JSON-RPC
    answer (:meth:`result`): human mode (notes meant for human mode are kept).

    Args:
        stream: if given, the notes written before the first result or heading go to
            it as they come (the caller shows them at once) instead of into the answer;
            later ones are kept, and printed after the results, in their order.
    """

    json_mode = False

    def __init__(self, stream: Callable[[str], None] | None = None) -> None:
        self.items: list[dict] = []
        self.text: list[str] = []
        self.notes: list[str] = []
        self.heading_text: str | None = None
        self._stream = stream

    def emit(self, obj: dict, human: str) -> None:
        """One result: its JSON object and its human line(s)."""
        self._stream = None
        self.items.append(obj)
        self.text.append(human)

    def heading(self, text: str) -> None:
        """The header row of a table (human mode)."""
        self._stream = None
        self.heading_text = text

    def note(self, text: str) -> None:
        """A note (stderr on the command line)."""
        if self._stream is not None:
            self._stream(text)
        else:
            self.notes.append(text)

    def result(self) -> dict:
        """``{"items": [OBJ], "text": [HUMAN], "notes": [TEXT]}`` (plus ``"heading"``)."""
        answer: dict[str, Any] = {"items": self.items, "text": self.text, "notes": self.notes}
        if self.heading_text is not None:
            answer["heading"] = self.heading_text
        return answer


def replay(out: Output, result: Any) -> None:
    """Print a :meth:`Recorder.result` as the command would have: heading, results, notes.

    Raises:
        CliError: the answer has another shape (not this version's daemon).
    """
    try:
        items, text, notes = result["items"], result["text"], result["notes"]
        heading = result.get("heading")
        rows = list(zip(items, text, strict=True))
    except (TypeError, KeyError, ValueError) as exc:
        raise CliError("the daemon sent an answer of an unexpected shape") from exc
    if isinstance(heading, str):
        out.heading(heading)
    for obj, human in rows:
        out.emit(obj, str(human))
    for note in notes:
        out.note(str(note))


def call_daemon(app: AppContext, method: str, params: dict, *,
                stream: bool = False) -> tuple[bool, Any]:
    """Call ``method`` on the daemon of ``app.home``: ``(True, result)``, or ``(False,
    None)`` when no daemon runs there. ``stream``: a command's method (:class:`Recorder`)
    called with ``"stream": true``, whose ``note`` notifications are printed as notes
    as they come.

    Raises:
        UnknownName, click.UsageError: (exit 2) a usage error answer (``data.reason``
            is the ``--json`` error code, ``data.param`` the parameter it is about).
        CliError: (exit 1) any other error answer, or the daemon went away.
    """
    remote = find_daemon(app.home)
    if remote is None:
        return False, None

    def show_note(msg: dict) -> bool:
        params = msg.get("params")
        if msg.get("method") != "note" or not isinstance(params, dict):
            return False
        app.out.note(str(params.get("text", "")))
        return True

    with remote:
        try:
            if not stream:
                return True, remote.call(method, params)
            return True, remote.call(method, {**params, "stream": True},
                                     on_notification=show_note)
        except RemoteError as exc:
            raise remote_failure(exc) from exc


def remote_failure(exc: RemoteError) -> click.ClickException:
    """The command-line error of a daemon's error answer (see :func:`call_daemon`)."""
    data = exc.data if isinstance(exc.data, dict) else {}
    if exc.code == USAGE_ERROR:
        reason = str(data.get("reason") or "usage")
        param = data.get("param")
        if isinstance(param, str):
            return UnknownName(exc.message, reason, param_hint=param)
        err = click.UsageError(exc.message)
        err.code = reason  # type: ignore[attr-defined] (the --json error code)
        return err
    err = CliError(f"daemon: {escape(exc.message)}")
    if isinstance(data.get("reason"), str):
        err.code = data["reason"]
    return err


def run_routed(app: AppContext, method: str, params: dict,
               core: Callable[..., Awaitable[None]], *,
               connect_timeout: float | None = None, show_lists: bool = False) -> None:
    """Run a command: through the daemon of ``app.home`` if one runs, else ``core`` here
    (see the module docstring; Ctrl-C or SIGTERM stop it with exit code 130;
    ``connect_timeout``: at most this many seconds to connect here; ``show_lists``: print
    the device-list changes that a send learned, :func:`cli.commands._events.lists_shown`).

    Raises:
        click.ClickException: the core's errors (or the daemon's, :func:`call_daemon`).
    """
    routed, result = call_daemon(app, method, params, stream=True)
    if routed:
        replay(app.out, result)
        return
    with state_of(app) as state, failures(), ExitStack() as stack:
        if show_lists:
            stack.enter_context(lists_shown(app, state))
        run_interruptible(lambda: core(
            state, app.out, lambda: app.connect(state, connect_timeout=connect_timeout),
            **params))
