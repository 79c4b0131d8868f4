"""Shared pieces of the Click commands: context object, error translation, trio entry.

Exit codes (DESIGN.md): 0 ok, 1 runtime failure (:class:`CliError`: network,
refused by the relay, locked or missing home), 2 usage error (Click's
``UsageError``/``BadParameter``).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractAsyncContextManager, ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import click

from cli.client import Client, open_client
from cli.errors import ClientError
from cli.events import Message
from cli.output import (
    Output,
    escape,
    has_unsafe,
    message_human,
    message_json,
    scrub,
    sender_label,
)
from cli.session.connection import CLIENT_SETTINGS
from cli.session.state import STATE_FILE, State, StateError, StateLocked, open_state
from relay.net import LinkSettings

DEFAULT_HOME = "~/.wa-cli"
CONNECT_TIMEOUT = 10.0
LOCK_TIMEOUT = 5.0  # seconds to wait for another process to release the home


class CliError(click.ClickException):
    """A runtime failure; exit code 1, message on stderr (control characters escaped)."""

    exit_code = 1

    def format_message(self) -> str:
        """The message as Click prints it: control characters escaped except newline and
        tab (:func:`cli.output.scrub`)."""
        return scrub(self.message)


def check_name(value: str, param_hint: str) -> str:
    """Validate a name chosen on this device (display name, device name, contact alias,
    group name): 1 to 100 characters, not only spaces, no control, line-separator or
    bidi character (:data:`cli.output.UNSAFE`).

    Raises:
        click.BadParameter: (exit 2) otherwise.
    """
    if not value.strip() or len(value) > 100:
        raise click.BadParameter("must be 1 to 100 characters", param_hint=param_hint)
    if has_unsafe(value):
        raise click.BadParameter(f"must not contain control characters (got '{escape(value)}')",
                                 param_hint=param_hint)
    return value


@dataclass
class AppContext:
    """``ctx.obj`` of every command: the device home, the output mode and the network
    settings (``--connect-timeout``, ``--request-timeout``, ``--keepalive``,
    ``--keepalive-timeout`` and their ``WA_*`` environment variables)."""

    home: Path
    out: Output
    net: LinkSettings = field(default=CLIENT_SETTINGS)
    connect_timeout: float = CONNECT_TIMEOUT

    def connect(self, state: State, *,
                connect_timeout: float | None = None) -> AbstractAsyncContextManager[Client]:
        """:func:`cli.client.open_client` with this invocation's network settings
        (``connect_timeout``: at most this many seconds instead of ``--connect-timeout``)."""
        limit = self.connect_timeout if connect_timeout is None else min(connect_timeout,
                                                                          self.connect_timeout)
        return open_client(state, connect_timeout=limit, settings=self.net)


@contextmanager
def failures() -> Iterator[None]:
    """Translate the library's domain errors into :class:`CliError` (exit 1)."""
    try:
        yield
    except (ClientError, StateError) as exc:
        raise CliError(escape(str(exc))) from exc
    except OSError as exc:
        raise CliError(f"{exc.strerror or exc}: {exc.filename or ''}".rstrip(": ")) from exc


def known_name(state: State, user_id: str) -> str | None:
    """The name this device may show for ``user_id`` as its own words: the local contact
    alias, or this account's own name; ``None`` for anyone else (whose declared name
    is only a claim, see :func:`cli.output.sender_label`)."""
    if user_id == state.user_id:
        return state.name
    return state.alias_of(user_id)


def user_label(state: State, user_id: str) -> str:
    """``you``, the contact alias, or ``unknown abcdefghijkl…`` (escaped)."""
    if user_id == state.user_id:
        return "you"
    return sender_label(state.alias_of(user_id), "", user_id)


def resolve_recipient(state: State, recipient: str) -> str:
    """The user_id to send to for ``NAME|USER_ID``.

    Raises:
        click.BadParameter: unknown contact and not a user id (exit 2).
        CliError: it is this account and it has no other device (nothing to send to).
    """
    try:
        user_id = state.resolve(recipient)
    except StateError as exc:
        raise click.BadParameter(str(exc), param_hint="NAME|USER_ID") from exc
    own = state.own_list()
    if user_id == state.user_id and own is not None and own.device_ids <= {state.device_id}:
        raise CliError("you have no other devices; nothing to send to yourself "
                       "(a message to yourself goes to your other linked devices)")
    return user_id


def message_row(state: State, msg: Message) -> tuple[dict, str]:
    """The ``--json`` object and the human row of a message, its sender named by
    :func:`known_name` (see :func:`cli.output.message_json`, :func:`cli.output.message_human`)."""
    known = known_name(state, msg.sender_user)
    sender = sender_label(known, msg.declared_name, msg.sender_user)
    peer = user_label(state, msg.peer) if msg.direction == "out" else ""
    return message_json(msg, known), message_human(msg, sender, peer)


@contextmanager
def state_of(app: AppContext):
    """Open (and lock) the device state of ``--home``, translating errors.

    One wa-cli process uses a device at a time: the home stays locked until the
    command ends (``recv --follow`` holds it until stopped), and another process
    waits :data:`LOCK_TIMEOUT` seconds for it.

    Raises:
        CliError: the home holds no account (nothing is created then); another
            process holds it; or see :func:`failures`.
    """
    if not (app.home / STATE_FILE).is_file():
        raise CliError(f"no account here ({app.home}): run 'wa-cli init' or 'wa-cli link'")
    with failures(), ExitStack() as stack:
        try:
            state = stack.enter_context(open_state(app.home, lock_timeout=LOCK_TIMEOUT))
        except StateLocked as exc:
            raise CliError(f"{exc}; a device is used by one wa-cli process at a time: stop "
                           "'wa-cli recv --follow' (or the other command) first") from exc
        yield state


def home_option(command: click.Command) -> click.Command:
    """Add ``--home DIR`` to a subcommand too (``wa-cli id --home H`` = ``wa-cli --home H id``;
    the later one wins). Appends to ``command.params``; returns ``command``."""

    def set_home(ctx: click.Context, param: click.Parameter, value: Path | None) -> None:
        if value is not None:
            ctx.find_object(AppContext).home = value.expanduser()

    command.params.append(click.Option(
        ["--home"], type=click.Path(file_okay=False, path_type=Path), expose_value=False,
        callback=set_home, is_eager=True, metavar="DIR", help="Same as the global --home."))
    return command


def json_option(command):
    """Add ``--json`` to a subcommand too (``wa-cli recv --json`` = ``wa-cli --json recv``)."""

    def enable(ctx: click.Context, param: click.Parameter, value: bool) -> bool:
        if value:
            ctx.find_object(AppContext).out.json_mode = True
        return value

    return click.option("--json", "json_flag", is_flag=True, expose_value=False, callback=enable,
                        is_eager=True, help="Same as the global --json.")(command)
