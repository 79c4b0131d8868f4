"""``wa-cli react | edit | delete | read | typing | disappear``: the messaging basics
beside ``send`` (see :mod:`cli.features.actions`; replies are ``send --reply-to``).

MSG_ID is a message id from ``recv``/``history`` (32 hex digits, or a prefix of at
least 8 that names one message on this device). CONVERSATION is a contact name, a
user id, or ``--group GROUP``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import click

from cli.client import Client
from cli.commands._common import (
    AppContext,
    failures,
    json_option,
    resolve_recipient,
    state_of,
    user_label,
)
from cli.commands._events import lists_shown
from cli.commands._route import Connect, call_daemon, run_routed
from cli.commands._signals import run_interruptible
from cli.features import actions, receipts
from cli.features.actions import ActionError
from cli.features.kinds import MAX_EMOJI, MAX_EXPIRES
from cli.output import Output, escape
from cli.session.group_state import GroupError
from cli.session.state import State


def run_action(app: AppContext, state: State, fn: Callable[[Client], Awaitable[Any]]) -> Any:
    """Connect with ``app``'s settings, ``await fn(client)``, translate errors (exit 1;
    130 if Ctrl-C or SIGTERM stopped it, :func:`cli.commands._signals.run_interruptible`)."""
    async def run():
        async with app.connect(state) as client:
            return await fn(client)

    with failures(), lists_shown(app, state):
        return run_interruptible(run)


def target_of(state: State, msg_id: str) -> dict:
    """The history entry of MSG_ID (exit 2 if unknown or ambiguous)."""
    try:
        return actions.find_message(state, msg_id)
    except ActionError as exc:
        raise click.BadParameter(str(exc), param_hint="MSG_ID") from exc


def reply_target(state: State, reply_to: str | None, conversation: str) -> bytes | None:
    """The 16-byte id of the ``--reply-to`` message, which must be of ``conversation``
    (exit 2 otherwise); ``None`` without ``--reply-to``."""
    if reply_to is None:
        return None
    entry = target_of(state, reply_to)
    if (entry.get("group_id") or entry.get("peer")) != conversation:
        raise click.BadParameter("that message is of another conversation",
                                 param_hint="--reply-to")
    return bytes.fromhex(entry["id"])


def conversation_of(state: State, recipient: str | None, group: str | None) -> str:
    """The conversation named by NAME|USER_ID or ``--group`` (exit 2 if unknown)."""
    if (recipient is None) == (group is None):
        raise click.UsageError("name one conversation: NAME|USER_ID or --group GROUP")
    if group is not None:
        try:
            return state.groups.find(group).state.hex_id
        except GroupError as exc:
            raise click.BadParameter(str(exc), param_hint="--group") from exc
    return resolve_recipient(state, recipient)


def conversation_label(state: State, conversation: str) -> str:
    """``group NAME`` or the contact label of a conversation (escaped)."""
    record = actions.group_of(state, conversation)
    return f"group {escape(record.state.name)}" if record else user_label(state, conversation)


def _emit(app: AppContext, state: State, what: str, result, entry: dict | None = None,
          **fields) -> None:
    obj = {"id": result.msg_id.hex(), "status": result.status, **fields}
    if entry is not None:
        obj["target"] = entry["id"]
    app.out.emit(obj, f"{what} ({result.status}) id {result.msg_id.hex()}")


@click.command()
@click.argument("msg_id")
@click.argument("emoji", required=False)
@click.option("--remove", is_flag=True, help="Remove your reaction instead.")
@json_option
@click.pass_obj
def react(app: AppContext, msg_id: str, emoji: str | None, remove: bool) -> None:
    """React to MSG_ID with EMOJI (one reaction per person; a new one replaces it).

    \b
    wa-cli react MSG_ID EMOJI
    wa-cli react MSG_ID --remove
    """
    if remove == (emoji is not None):
        raise click.UsageError("usage: wa-cli react MSG_ID EMOJI | wa-cli react MSG_ID --remove")
    if emoji is not None and not 0 < len(emoji) <= MAX_EMOJI:
        raise click.BadParameter(f"must be 1 to {MAX_EMOJI} characters", param_hint="EMOJI")
    what = "removed your reaction" if remove else f"reacted {escape(emoji or '')}"
    if _through_daemon(app, "sendReaction", {"target": msg_id, "emoji": emoji or ""}, what):
        return
    with state_of(app) as state:
        entry = target_of(state, msg_id)
        result, _ = run_action(app, state, lambda c: actions.react(c, entry["id"], emoji or ""))
        _emit(app, state, what, result, entry, reaction=emoji or "")


@click.command()
@click.argument("msg_id")
@click.argument("text")
@json_option
@click.pass_obj
def edit(app: AppContext, msg_id: str, text: str) -> None:
    """Replace the text of your message MSG_ID on every device of the conversation
    (TEXT '-' reads it from stdin)."""
    text = read_text(text)
    if _through_daemon(app, "edit", {"target": msg_id, "text": text}, "edited"):
        return
    with state_of(app) as state:
        entry = target_of(state, msg_id)
        result, _ = run_action(app, state, lambda c: actions.edit(c, entry["id"], text))
        _emit(app, state, "edited", result, entry)


@click.command()
@click.argument("msg_id")
@json_option
@click.pass_obj
def delete(app: AppContext, msg_id: str) -> None:
    """Delete your message MSG_ID for everyone: its text (and file) leave the history
    of every device of the conversation; a row marked deleted stays."""
    if _through_daemon(app, "delete", {"target": msg_id}, "deleted"):
        return
    with state_of(app) as state:
        entry = target_of(state, msg_id)
        result, _ = run_action(app, state, lambda c: actions.delete(c, entry["id"]))
        _emit(app, state, "deleted", result, entry)


@click.command()
@click.argument("recipient", metavar="[NAME|USER_ID]", required=False)
@click.option("--group", "group", metavar="GROUP", help="Mark a group's messages read.")
@click.option("--all", "all_", is_flag=True, help="Mark every conversation read.")
@json_option
@click.pass_obj
def read(app: AppContext, recipient: str | None, group: str | None, all_: bool) -> None:
    """Mark the received messages of a conversation read and send read receipts to
    their authors (end-to-end encrypted; your other devices mark them read too)."""
    if all_ and (recipient is not None or group is not None):
        raise click.UsageError("--all names no conversation")
    params = {} if all_ else {"to": recipient} if group is None else {"group": group}
    if not all_ and (recipient is None) == (group is None):
        raise click.UsageError("name one conversation: NAME|USER_ID or --group GROUP")
    routed, answer = call_daemon(app, "sendReceipt", params)
    if routed:
        ids = list(answer["read"])
        app.out.emit({"read": ids}, f"marked {len(ids)} message{'s' * (len(ids) != 1)} read")
        return
    with state_of(app) as state:
        conversation = None if all_ else conversation_of(state, recipient, group)
        entries = receipts.unread(state.history, conversation)
        if entries:
            entries = run_action(app, state, lambda c: receipts.mark_read(c, conversation))
        ids = [e["id"] for e in entries]
    app.out.emit({"read": ids}, f"marked {len(ids)} message{'s' * (len(ids) != 1)} read")


@click.command()
@click.argument("recipient", metavar="NAME|USER_ID")
@click.option("--stop", is_flag=True, help="Say you stopped typing.")
@json_option
@click.pass_obj
def typing(app: AppContext, recipient: str, stop: bool) -> None:
    """Tell RECIPIENT's connected devices that you are typing (or stopped): sent
    ephemeral, never stored or queued; a device that is offline never sees it."""
    run_routed(app, "sendTyping", {"to": recipient, "stop": stop}, send_typing, show_lists=True)


async def send_typing(state: State, out: Output, connect: Connect, to: str,
                      stop: bool = False) -> None:
    """The core of ``typing`` (JSON-RPC ``sendTyping``): emits ``{"to", "typing",
    "copies"}`` (copies: devices it reached).

    Raises:
        click.BadParameter: (exit 2) unknown contact.
        ClientError: no connection, or the relay refused.
    """
    user_id = resolve_recipient(state, to)
    async with connect() as client:
        copies = await actions.typing(client, user_id, not stop)
    out.emit({"to": user_id, "typing": not stop, "copies": copies},
             f"told {user_label(state, user_id)} you {'stopped' if stop else 'are'} typing")


@click.command()
@click.argument("args", nargs=-1, required=True, metavar="[NAME|USER_ID] SECONDS")
@click.option("--group", "group", metavar="GROUP", help="Set it for a group.")
@json_option
@click.pass_obj
def disappear(app: AppContext, args: tuple[str, ...], group: str | None) -> None:
    """Set the disappearing-message timer of a conversation to SECONDS (0: off), for
    everyone in it. Each message then carries the timer inside its encryption and is
    removed from the history of every device SECONDS after it was sent.

    \b
    wa-cli disappear NAME|USER_ID SECONDS
    wa-cli disappear --group GROUP SECONDS
    """
    if len(args) > 2 or (len(args) == 2) == (group is not None):
        raise click.UsageError("usage: wa-cli disappear NAME|USER_ID SECONDS | "
                               "wa-cli disappear --group GROUP SECONDS")
    recipient = args[0] if len(args) == 2 else None
    seconds = click.IntRange(0, MAX_EXPIRES).convert(args[-1], None, click.get_current_context())
    run_routed(app, "setTimer", {"to": recipient, "group": group, "seconds": seconds},
               set_timer, show_lists=True)


async def set_timer(state: State, out: Output, connect: Connect, seconds: int,
                    to: str | None = None, group: str | None = None) -> None:
    """The core of ``disappear`` (JSON-RPC ``setTimer``): emits ``{"id", "status",
    "expires_in"}``.

    Raises:
        click.BadParameter: (exit 2) unknown conversation, or seconds out of range.
        ClientError: no connection, or the relay refused.
    """
    if not 0 <= seconds <= MAX_EXPIRES:
        raise click.BadParameter(f"must be 0 to {MAX_EXPIRES}", param_hint="SECONDS")
    conversation = conversation_of(state, to, group)
    async with connect() as client:
        result = await actions.set_timer(client, conversation, seconds)
    label = conversation_label(state, conversation)
    what = f"disappearing messages {'off' if not seconds else f'{seconds} s'} for {label}"
    out.emit({"id": result.msg_id.hex(), "status": result.status, "expires_in": seconds},
             f"{what} ({result.status})")


def _through_daemon(app: AppContext, method: str, params: dict, what: str) -> bool:
    """``react``, ``edit``, ``delete`` through the daemon if one runs (``False`` if none):
    prints ``{"id", "status", "target"[, "reaction"]}`` as the command does."""
    routed, answer = call_daemon(app, method, params)
    if routed:
        app.out.emit(answer, f"{what} ({answer['status']}) id {answer['id']}")
    return routed


def read_text(text: str) -> str:
    """TEXT as given, or stdin's contents for ``-`` (one trailing newline dropped).

    Raises:
        click.BadParameter: empty.
    """
    if text == "-":
        text = click.get_text_stream("stdin").read()
        text = text[:-1] if text.endswith("\n") else text
    if not text.strip():
        raise click.BadParameter("is empty", param_hint="TEXT")
    return text
