"""``wa-cli send NAME|USER_ID TEXT`` (``--group``, ``--file``: see :mod:`.group`, :mod:`.files`)."""

from __future__ import annotations

from pathlib import Path

import click

from cli.commands._common import AppContext, json_option, state_of, user_label
from cli.commands._route import Connect, run_routed
from cli.commands.basics import read_text
from cli.commands.sendtext import send_text
from cli.daemon.jsonrpc import SEND_UNKNOWN
from cli.daemon.remote import RemoteError
from cli.errors import SendUnknown
from cli.features.payload import MAX_TEXT
from cli.features.resend import resend
from cli.output import Output, escape
from cli.session.state import State

from . import files as file_cmd
from . import group as group_cmd

_VALUE_OPTIONS = frozenset({"--file", "--home", "--retry", "--reply-to"})  # options of ``send`` that take a value


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
@click.option("--reply-to", "reply_to", metavar="MSG_ID",
              help="Send TEXT as a reply quoting this message (of the same conversation).")
@click.option("--retry", "retry_id", metavar="MSG_ID",
              help="Send again, under its own id, a message of this device whose answer never "
                   "came, or a message some homes refused (a group's members, or your own "
                   "other devices: to them only; shown once even if the first attempt was "
                   "delivered).")
@json_option
@click.pass_context
def send(ctx: click.Context, recipient: str | None, text: str | None,
         group_name: str | None, file_path: Path | None, reply_to: str | None,
         retry_id: str | None) -> None:
    """Send TEXT, end-to-end encrypted, to every device of a contact (or of a group).

    \b
    wa-cli send NAME|USER_ID TEXT
    wa-cli send --group GROUP TEXT
    wa-cli send NAME|USER_ID --file PATH [CAPTION]
    wa-cli send --group GROUP --file PATH [CAPTION]
    wa-cli send --retry MSG_ID
    wa-cli send NAME|USER_ID --reply-to MSG_ID TEXT
    wa-cli send NAME|USER_ID -        (TEXT read from stdin)

    TEXT "-" reads the text from stdin.

    A recipient and --group are mutually exclusive. Prints the message id and
    the relay's status: "stored" (durable at the recipient's home) or "queued"
    (durable in your home's outbox; the recipient's home is unreachable and
    will get it later), or "pending" (no relay reachable: kept on this device,
    see 'wa-cli outbox', and sent, once, by the next command that connects or
    by the daemon). While 'wa-cli daemon' serves this --home, send goes
    through it. Exit code 0 once stored, queued or pending, even if Ctrl-C
    came after the message left; 130 if Ctrl-C stopped it before. If the relay's answer never comes (the connection went
    silent or broke after the message left), the status is unknown: send exits
    1 saying so, and 'wa-cli send --retry MSG_ID' sends it again under the same
    id, which the recipient sees once whatever happened to the first attempt.
    """
    app = ctx.find_object(AppContext)
    if retry_id is not None:
        if recipient is not None or text is not None or group_name or file_path or reply_to:
            raise click.UsageError("usage: wa-cli send --retry MSG_ID (nothing else)")
        return _retry(app, retry_id)
    if group_name is not None and ctx.meta["send.recipient_before_group"]:
        raise click.UsageError(
            f"a recipient ({recipient!r}) and --group are mutually exclusive: use "
            "'wa-cli send NAME|USER_ID TEXT' or 'wa-cli send --group GROUP TEXT'")
    if file_path is not None:  # wa-cli send NAME --file PATH [CAPTION] (or --group GROUP)
        if reply_to is not None:
            raise click.UsageError("--reply-to goes with a text, not with --file")
        return file_cmd.send_file(app, file_path, recipient=recipient, caption=text,
                                  group=group_name)
    if group_name is not None:  # wa-cli send --group GROUP TEXT: the one argument is TEXT
        if recipient is None or text is not None:
            raise click.UsageError("usage: wa-cli send --group GROUP TEXT")
        text = read_text(recipient)
        _check_text(text)
        return group_cmd.send_to_group(app, group_name, text, reply_to)
    if recipient is None or text is None:
        raise click.UsageError("usage: wa-cli send NAME|USER_ID TEXT")
    text = read_text(text)
    _check_text(text)
    send_text(app, text, recipient=recipient, reply_to=reply_to)


def _retry(app: AppContext, retry_id: str) -> None:
    """``wa-cli send --retry MSG_ID``: see :mod:`cli.features.resend`."""
    try:
        msg_id = bytes.fromhex(retry_id)
    except ValueError:
        msg_id = b""
    if len(msg_id) != 16:
        raise click.BadParameter("must be a message id: 32 hex digits", param_hint="--retry")
    try:
        run_routed(app, "resend", {"id": retry_id.lower()}, resend_message, show_lists=True)
    except click.ClickException as exc:
        cause = exc.__cause__  # through a daemon: its -32002 answer (the core's line is lost)
        if app.out.json_mode and isinstance(cause, RemoteError) and cause.code == SEND_UNKNOWN:
            with state_of(app, readonly=True) as state:
                app.out.emit(_unknown(state, msg_id), "")
        raise


def _unknown(state: State, msg_id: bytes) -> dict:
    """The ``--json`` line of a resend whose answer never came: ``{"id", "status":
    "unknown", "to"}`` (``to``: the user id, or the group id of a group message)."""
    entry = state.find_history(msg_id.hex()) or {}
    return {"id": msg_id.hex(), "status": "unknown",
            "to": entry.get("group_id") or entry.get("peer", "")}


async def resend_message(state: State, out: Output, connect: Connect, id: str) -> None:  # noqa: A002
    """The core of ``send --retry`` (JSON-RPC ``resend``): send again, under its own id,
    a message of this device whose answer never came; emits ``{"id", "status", "to"}``
    (``"group", "group_id"`` for a group's).

    Raises:
        click.BadParameter: (exit 2) not a message id.
        SendUnknown: the answer did not come this time either (``--json``: an
            ``{"id", "status": "unknown", "to"}`` line is emitted first); ClientError.
    """
    try:
        msg_id = bytes.fromhex(id)
    except ValueError:
        msg_id = b""
    if len(msg_id) != 16:
        raise click.BadParameter("must be a message id: 32 hex digits", param_hint="--retry")
    try:
        async with connect() as client:
            status, entry = await resend(client, msg_id)
    except SendUnknown:
        if out.json_mode:  # (through a daemon, the command prints it: see _retry)
            out.emit(_unknown(state, msg_id), "")
        raise
    if entry.get("group_id"):
        record = state.groups.groups.get(bytes.fromhex(entry["group_id"]))
        group = record.state.name if record is not None else entry["group_id"]
        name = f"group {escape(group)}"
        obj = {"id": id, "status": status, "group": group, "group_id": entry["group_id"]}
    else:
        name = user_label(state, entry["peer"])
        obj = {"id": id, "status": status, "to": entry["peer"]}
    out.emit(obj, f"sent again to {name} ({status}) id {id}")
