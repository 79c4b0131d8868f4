"""``wa-cli send NAME|USER_ID TEXT`` (``--group``, ``--file``: see :mod:`.group`, :mod:`.files`)."""

from __future__ import annotations

from pathlib import Path

import click
import trio

from ..client import open_client
from ..payload import MAX_TEXT
from . import files as file_cmd
from . import group as group_cmd
from ._common import (
    CONNECT_TIMEOUT,
    AppContext,
    failures,
    json_option,
    resolve_recipient,
    state_of,
    user_label,
)
from ._events import lists_shown

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

        with failures(), lists_shown(app, state):
            result = trio.run(run)
        name = user_label(state, user_id)
    app.out.emit(
        {"id": result.msg_id.hex(), "status": result.status, "to": user_id},
        f"sent to {name} ({result.status}) id {result.msg_id.hex()}",
    )
