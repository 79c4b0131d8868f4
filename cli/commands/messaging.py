"""``wa-cli send NAME|USER_ID TEXT`` and ``wa-cli recv [--follow] [--timeout S]``."""

from __future__ import annotations

import signal
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import click
import trio

from ..client import BacklogDone, Bounce, DevicesChanged, Message, open_client
from ..group_receiving import GroupChanged
from ..output import (
    bounce_human,
    devices_changed_human,
    devices_changed_json,
)
from ..payload import MAX_TEXT
from ..state import State
from . import files as file_cmd
from . import group as group_cmd
from ._common import (
    CONNECT_TIMEOUT,
    AppContext,
    CliError,
    failures,
    json_option,
    message_row,
    resolve_recipient,
    state_of,
    user_label,
)

BACKLOG_IDLE_LIMIT = 30.0  # seconds without any frame before ``synced`` -> give up

T = TypeVar("T")


_VALUE_OPTIONS = frozenset({"--file", "--home"})  # options of ``send`` that take a value


def _recipient_before_group(args: list[str]) -> bool:
    """Whether a positional argument comes before ``--group`` in ``send``'s arguments
    (it is then a recipient, as in ``wa-cli send NAME TEXT``)."""
    tokens = iter(args)
    positional = False
    for token in tokens:
        if token == "--":
            return False
        if token == "--group" or token.startswith("--group="):
            return positional
        if token in _VALUE_OPTIONS:
            next(tokens, None)
        elif not token.startswith("-") or token == "-":
            positional = True
    return False


class _SendCommand(click.Command):
    """``send``: notes in ``ctx.meta`` whether a recipient was given before ``--group``."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        ctx.meta["send.recipient_before_group"] = _recipient_before_group(args)
        return super().parse_args(ctx, args)


def _check_text(text: str) -> None:
    if not text.strip():
        raise click.BadParameter("is empty", param_hint="TEXT")
    if len(text) > MAX_TEXT:
        raise click.BadParameter(f"longer than {MAX_TEXT} characters", param_hint="TEXT")


@click.command(cls=_SendCommand)
@click.argument("recipient", metavar="NAME|USER_ID", required=False)
@click.argument("text", required=False)
@click.option("--group", "group_name", metavar="GROUP",
              help="Send TEXT to a group (name or id): wa-cli send --group GROUP TEXT.")
@click.option("--file", "file_path", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Send this file (encrypted, uploaded with a progress bar); TEXT is an "
                   "optional caption.")
@json_option
@click.pass_context
def send(ctx: click.Context, recipient: str | None, text: str | None,
         group_name: str | None, file_path: Path | None) -> None:
    """Send TEXT, end-to-end encrypted, to every device of a contact (or of a group).

    \b
    wa-cli send NAME|USER_ID TEXT
    wa-cli send --group GROUP TEXT
    wa-cli send NAME|USER_ID --file PATH [CAPTION]
    wa-cli send --group GROUP --file PATH [CAPTION]

    A recipient and --group are mutually exclusive. Prints the message id and
    the relay's status: "stored" (durable at the recipient's home) or "queued"
    (durable in your home's outbox; the recipient's home is unreachable and
    will get it later).
    """
    app = ctx.find_object(AppContext)
    if group_name is not None and ctx.meta["send.recipient_before_group"]:
        raise click.UsageError(
            f"a recipient ({recipient!r}) and --group are mutually exclusive: use "
            "'wa-cli send NAME|USER_ID TEXT' or 'wa-cli send --group GROUP TEXT'")
    if file_path is not None:  # wa-cli send NAME --file PATH [CAPTION] (or --group GROUP)
        return file_cmd.send_file(app, file_path, recipient=recipient, caption=text,
                                  group=group_name)
    if group_name is not None:  # wa-cli send --group GROUP TEXT: the one argument is TEXT
        if recipient is None or text is not None:
            raise click.UsageError("usage: wa-cli send --group GROUP TEXT")
        _check_text(recipient)
        return group_cmd.send_to_group(app, group_name, recipient)
    if recipient is None or text is None:
        raise click.UsageError("usage: wa-cli send NAME|USER_ID TEXT")
    _check_text(text)
    with state_of(app) as state:
        user_id = resolve_recipient(state, recipient)

        async def run():
            async with open_client(state, connect_timeout=CONNECT_TIMEOUT) as client:
                return await client.send_text(user_id, text)

        with failures():
            result = trio.run(run)
        name = user_label(state, user_id)
    app.out.emit(
        {"id": result.msg_id.hex(), "status": result.status, "to": user_id},
        f"sent to {name} ({result.status}) id {result.msg_id.hex()}",
    )


def _show(app: AppContext, state: State, event) -> None:
    if isinstance(event, Message):
        app.out.emit(*message_row(state, event))
    elif isinstance(event, Bounce):
        app.out.note(bounce_human(event))
    elif isinstance(event, DevicesChanged):
        if app.out.json_mode:
            app.out.emit(devices_changed_json(event), "")
        else:
            app.out.note(devices_changed_human(event, own=event.user_id == state.user_id))
    elif isinstance(event, GroupChanged):
        if app.out.json_mode:
            app.out.emit(group_cmd.group_changed_json(event), "")
        else:
            app.out.note(group_cmd.group_changed_human(state, event))
    # Dropped envelopes are logged as warnings by the client.


async def _until_interrupted(fn: Callable[..., Awaitable[T]], *args) -> T | None:
    """``await fn(*args)``, cancelled by the first SIGINT (Ctrl-C): then ``None``.

    Must run in the main thread (signal handling). Errors of ``fn`` are raised as
    themselves, not wrapped in an exception group.
    """
    result = None

    async def cancel_on_signal(signals, scope: trio.CancelScope) -> None:  # noqa: ANN001
        async for _ in signals:
            scope.cancel()
            return

    try:
        with trio.open_signal_receiver(signal.SIGINT) as signals:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(cancel_on_signal, signals, nursery.cancel_scope)
                result = await fn(*args)
                nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:  # re-raised, never swallowed
        if len(group.exceptions) == 1:
            raise group.exceptions[0] from None
        raise
    return result


async def _recv(app: AppContext, state: State, follow: bool, idle_s: float,
                files: file_cmd.FileReceiver) -> int:
    shown = 0
    async with open_client(state, connect_timeout=CONNECT_TIMEOUT) as client:
        await files.resume_pending(client)
        receiver = client.receive()
        backlog_done = False
        while True:
            idle = None if follow and backlog_done else (
                idle_s if backlog_done else max(idle_s, BACKLOG_IDLE_LIMIT))
            event = None
            with trio.move_on_after(idle if idle is not None else float("inf")):
                event = await receiver.__anext__()
            if event is None:
                if not backlog_done:
                    raise CliError("the relay did not finish delivering the queued messages")
                return shown
            if isinstance(event, BacklogDone):
                backlog_done = True
                continue
            shown += isinstance(event, Message)
            if isinstance(event, Message) and event.type == "file":
                await files.show(client, event)
            else:
                _show(app, state, event)


@click.command()
@click.option("--follow", "-f", is_flag=True, help="Keep printing new messages until interrupted.")
@click.option("--timeout", type=click.FloatRange(min=0), default=2.0, show_default=True,
              help="Return once the queue is printed and nothing new came for this many seconds.")
@click.option("--downloads", type=click.Path(file_okay=False, path_type=Path),
              help="Where received files are saved  [default: HOME/downloads]")
@json_option
@click.pass_obj
def recv(app: AppContext, follow: bool, timeout: float, downloads: Path | None) -> None:
    """Print and acknowledge the messages queued for this device.

    With --follow it keeps printing new messages until interrupted; Ctrl-C then
    stops it quietly with exit code 0.

    Each message is decrypted, saved locally, then acknowledged to the relay,
    and shown once even if the relay delivers it again.
    """
    with state_of(app) as state, failures():
        files = file_cmd.FileReceiver(app, state, file_cmd.default_downloads(app, downloads))
        if follow:
            trio.run(_until_interrupted, _recv, app, state, True, timeout, files)
            shown = None
        else:
            shown = trio.run(_recv, app, state, False, timeout, files)
    if not app.out.json_mode and shown == 0:
        app.out.note("no new messages")
    files.check()
