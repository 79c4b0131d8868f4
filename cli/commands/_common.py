"""Shared pieces of the Click commands: context object, error translation, trio entry.

Exit codes (DESIGN.md): 0 ok, 1 runtime failure (:class:`CliError`: network,
refused by the relay, locked or missing home), 2 usage error (Click's
``UsageError``/``BadParameter``, :class:`UnknownName` for an unknown contact or group),
130 interrupted before the action happened. With ``--json`` an error is printed on
stdout as ``{"error": {"code": CODE, "message": TEXT}}`` (:func:`error_code`).
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from contextlib import AbstractAsyncContextManager, ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import click

from cli.client import Client, open_client
from cli.commands._passphrase import for_home
from cli.daemon.remote import find_daemon
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
from cli.session.vault import holder_pid
from relay.net import LinkSettings

DEFAULT_HOME = "~/.wa-cli"
CONNECT_TIMEOUT = 10.0
LOCK_TIMEOUT = 5.0  # seconds to wait for another process to release the home


class CliError(click.ClickException):
    """A runtime failure; exit code 1, message on stderr (control characters escaped)."""

    exit_code = 1
    code = "failed"

    def format_message(self) -> str:
        """The message as Click prints it: control characters escaped except newline and
        tab (:func:`cli.output.scrub`)."""
        return scrub(self.message)


class UnknownName(click.BadParameter):
    """A contact or group that this device does not know (exit code 2).

    Args:
        code: ``unknown_contact`` or ``unknown_group`` (the ``--json`` error code).
    """

    def __init__(self, message: str, code: str, param_hint: str) -> None:
        super().__init__(message, param_hint=param_hint)
        self.code = code


def error_code(exc: click.ClickException) -> str:
    """The ``--json`` error code of a command's error: its ``code`` attribute, else
    ``usage`` (exit 2) or ``failed``."""
    code = getattr(exc, "code", None)
    if isinstance(code, str):
        return code
    return "usage" if isinstance(exc, click.UsageError) else "failed"


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
    process: bool = False  # run as the wa-cli program (not in a test's CliRunner)

    def stop_now(self) -> None:
        """After a command stopped by a signal has flushed and saved everything: end the
        process at once with exit code 0, skipping the interpreter's teardown (a few
        hundred ms), so that ``recv --follow`` stops within 0.5 s. Returns (does
        nothing) when not run as the program."""
        if not self.process:
            return
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(OSError, ValueError):
                stream.flush()
        os._exit(0)

    def connect(self, state: State, *,
                connect_timeout: float | None = None) -> AbstractAsyncContextManager[Client]:
        """:func:`cli.client.open_client` with this invocation's network settings
        (``connect_timeout``: at most this many seconds instead of ``--connect-timeout``)."""
        limit = self.connect_timeout if connect_timeout is None else min(connect_timeout,
                                                                          self.connect_timeout)
        return open_client(state, connect_timeout=limit, settings=self.net)


@contextmanager
def failures() -> Iterator[None]:
    """Translate the library's domain errors into :class:`CliError` (exit 1; its ``--json``
    code is the error's ``reason`` where it has one, :class:`cli.errors.LinkFailed`)."""
    try:
        yield
    except (ClientError, StateError) as exc:
        err = CliError(escape(str(exc)))
        if isinstance(getattr(exc, "reason", None), str):  # LinkFailed's own --json code
            err.code = exc.reason
        raise err from exc
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
        raise UnknownName(str(exc), "unknown_contact", param_hint="NAME|USER_ID") from exc
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
def state_of(app: AppContext, *, readonly: bool = False):
    """Open the device state of ``--home``, translating errors.

    One wa-cli process changes a device at a time: the home stays locked until the
    command ends (``recv --follow`` holds it until stopped), and another process
    waits :data:`LOCK_TIMEOUT` seconds for it. A ``readonly`` command only takes the
    readers' shared lock and runs beside it (the state as last saved; never saved).
    While a daemon serves the home (:mod:`cli.daemon`), the changing commands go
    through it (:mod:`cli.commands._route`); one that needs the device to itself
    (a second ``daemon``; for now ``send --file`` and ``history --download``) fails at
    once, naming the daemon's process id.

    Raises:
        CliError: the home holds no account (nothing is created then); another
            process holds it; or see :func:`failures`.
    """
    if not (app.home / STATE_FILE).is_file():
        raise CliError(f"no account here ({app.home}): run 'wa-cli init' or 'wa-cli link'")
    if not readonly:
        remote = find_daemon(app.home)
        if remote is not None:
            remote.close()
            pid = holder_pid(app.home)
            raise CliError(f"{app.home} is served by the wa-cli daemon (process {pid}), and "
                           "this needs the device to itself: stop the daemon first")
    with failures(), ExitStack() as stack:
        try:
            state = stack.enter_context(open_state(
                app.home, lock_timeout=LOCK_TIMEOUT, readonly=readonly,
                passphrase_source=for_home(app.home.expanduser().absolute())))
        except StateLocked as exc:
            raise CliError(f"{exc}; one wa-cli process changes a device at a time: stop it "
                           "first, or run 'wa-cli daemon' to share the device between "
                           "commands") from exc
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
