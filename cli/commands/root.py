"""``wa-cli``: the Click root group (:data:`main`). Commands live in sibling modules.

Global options: ``--home DIR`` (env ``WA_HOME``, default ``~/.wa-cli``) and
``--json``, before the subcommand or after it (``wa-cli id --home DIR --json``); the
network settings ``--connect-timeout``, ``--request-timeout``, ``--keepalive`` and
``--keepalive-timeout`` (env ``WA_CONNECT_TIMEOUT``, ``WA_REQUEST_TIMEOUT``,
``WA_KEEPALIVE``, ``WA_KEEPALIVE_TIMEOUT``) before the subcommand. Exit codes: 0 the action happened, 1 runtime failure, 2 usage error
(unknown contacts and groups included), 130 Ctrl-C or SIGTERM stopped the action
(``recv --follow`` and ``daemon`` instead stop quietly with 0); with ``--json`` an error
is also printed on stdout as ``{"error": {"code", "message"}}``.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import sys
from pathlib import Path
from typing import NoReturn

import click

from cli.commands._common import (
    CONNECT_TIMEOUT,
    DEFAULT_HOME,
    AppContext,
    error_code,
    home_option,
)
from cli.commands._signals import STOP_SIGNALS, Interrupted
from cli.output import Output, escape, json_line, scrub
from cli.session.connection import REQUEST_TIMEOUT, client_settings
from relay.protocol.keepalive import DEFAULT_KEEPALIVE

_SECONDS = click.FloatRange(min=0, min_open=True)


class _EscapingFormatter(logging.Formatter):
    """Log lines on stderr with control characters escaped (warnings quote peers' data)."""

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 (logging API)
        return escape(super().formatMessage(record))


def _json_wanted(ctx: click.Context) -> bool:
    app = ctx.find_object(AppContext)
    if app is not None and app.out.json_mode:
        return True
    args = sys.argv[1:]
    return "--json" in (args[:args.index("--")] if "--" in args else args)


def _fail(ctx: click.Context, code: str, message: str, exit_code: int) -> NoReturn:
    """End the command: the message on stderr and, with --json, ``{"error": {"code",
    "message"}}`` on stdout; exit with ``exit_code``."""
    if _json_wanted(ctx):
        click.echo(json_line({"error": {"code": code, "message": message}}))
    click.echo(scrub(message), err=True)
    raise click.exceptions.Exit(exit_code)


class _Root(click.Group):
    """The root group: a signal that stopped the action ends it with exit code 130 (not
    Click's "Aborted!" and 1, and no traceback); with --json, errors are JSON objects on
    stdout (``{"error": {"code", "message"}}``); an unexpected error is one line, not a
    traceback (``WA_DEBUG=1`` shows it)."""

    def invoke(self, ctx: click.Context):  # noqa: ANN201 (Click's signature)
        # In a wa-cli process (cli.__main__.run) SIGINT and SIGTERM stay blocked until
        # here and are blocked again once the command is over: a signal in Click's own
        # parsing or teardown would otherwise be Click's "Aborted!" with exit code 1.
        process = isinstance(ctx.obj, dict) and bool(ctx.obj.get("process"))
        try:
            if process:
                _take_signals()
            return super().invoke(ctx)
        except (KeyboardInterrupt, Interrupted):
            _fail(ctx, "interrupted", "interrupted", 130)
        except click.exceptions.Exit:
            raise
        except click.ClickException as exc:
            if not _json_wanted(ctx):
                raise
            click.echo(json_line({"error": {"code": error_code(exc),
                                            "message": exc.format_message()}}))
            exc.show()
            raise click.exceptions.Exit(exc.exit_code) from None
        except click.exceptions.Abort:
            _fail(ctx, "interrupted", "interrupted", 130)
        except Exception as exc:  # the process boundary: one line, never a traceback
            if os.environ.get("WA_DEBUG"):
                raise
            _fail(ctx, "internal", f"wa-cli: unexpected error: {type(exc).__name__}: {exc} "
                  "(WA_DEBUG=1 shows where)", 1)
        finally:
            if process:  # the action is over: a late signal no longer changes the exit code
                signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)


def _take_signals() -> None:
    """Unblock SIGINT and SIGTERM (held since start-up by :func:`cli.__main__.run`).

    Raises:
        KeyboardInterrupt: one of them came while they were held (the command has not
            started: exit code 130).
    """
    pending = signal.sigpending() & set(STOP_SIGNALS)
    if pending:
        for signum in pending:
            signal.signal(signum, signal.SIG_IGN)  # drop it when unblocked
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
        raise KeyboardInterrupt
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)


@click.group(cls=_Root, context_settings={"help_option_names": ["-h", "--help"]},
             epilog="Exit codes: 0 the action happened (also when Ctrl-C came after a send "
                    "left), 1 runtime failure (network, refused, locked or missing home), 2 "
                    "usage error (also an unknown contact or group), 130 Ctrl-C or SIGTERM "
                    "stopped the action ('recv --follow' and 'daemon' stop with 0). With "
                    "--json, errors are {\"error\": {\"code\", \"message\"}} on stdout.\n\n"
                    "Environment: WA_HOME (--home); WA_PASSPHRASE: the passphrase of a home "
                    "created with a passphrase ('wa-cli init' with WA_PASSPHRASE set, "
                    "--passphrase or --keyring: its key is then derived from it, no "
                    "storage.key file); without it, the passphrase is read from the OS "
                    "keyring (homes made with 'init --keyring') or asked for when stdin is a "
                    "terminal; WA_CONNECT_TIMEOUT, WA_REQUEST_TIMEOUT, WA_KEEPALIVE, "
                    "WA_KEEPALIVE_TIMEOUT; WA_CLUSTER_KEY ('init --cluster-key'); "
                    "WA_AUTO_DOWNLOAD ('recv --auto-download'); WA_DEBUG=1 shows tracebacks "
                    "of unexpected errors; WA_LOG_LEVEL (e.g. INFO, DEBUG; default "
                    "WARNING) for what wa-cli logs on stderr.")
@click.option("--home", type=click.Path(file_okay=False, path_type=Path), envvar="WA_HOME",
              default=DEFAULT_HOME, show_default=True,
              help="Directory of this device's state (env WA_HOME).")
@click.option("--json", "json_mode", is_flag=True,
              help="Machine-readable output: one JSON object per line on stdout.")
@click.option("--connect-timeout", type=_SECONDS, envvar="WA_CONNECT_TIMEOUT",
              default=CONNECT_TIMEOUT, show_default=True, metavar="S",
              help="Seconds to connect to a node, and for each handshake step "
                   "(env WA_CONNECT_TIMEOUT).")
@click.option("--request-timeout", type=_SECONDS, envvar="WA_REQUEST_TIMEOUT",
              default=REQUEST_TIMEOUT, show_default=True, metavar="S",
              help="Seconds a request may wait for the node's answer (env WA_REQUEST_TIMEOUT).")
@click.option("--keepalive", type=click.FloatRange(min=0), envvar="WA_KEEPALIVE",
              default=DEFAULT_KEEPALIVE.interval, show_default=True, metavar="S",
              help="Seconds of silence on a connection before it is pinged; 0: never "
                   "(env WA_KEEPALIVE).")
@click.option("--keepalive-timeout", type=_SECONDS, envvar="WA_KEEPALIVE_TIMEOUT",
              default=DEFAULT_KEEPALIVE.timeout, show_default=True, metavar="S",
              help="Seconds a ping may stay unanswered before the connection is given up "
                   "as dead (env WA_KEEPALIVE_TIMEOUT).")
@click.version_option(package_name="wa-relay", prog_name="wa-cli")
@click.pass_context
def main(ctx: click.Context, home: Path, json_mode: bool, connect_timeout: float,
         request_timeout: float, keepalive: float, keepalive_timeout: float) -> None:
    """wa-cli: end-to-end encrypted messaging over wa-relay nodes."""
    handler = logging.StreamHandler()
    handler.setFormatter(_EscapingFormatter("wa-cli: %(message)s"))
    level = os.environ.get("WA_LOG_LEVEL", "WARNING").upper()
    logging.basicConfig(level=level if level in logging.getLevelNamesMapping() else "WARNING",
                        handlers=[handler])
    net = client_settings(keepalive=keepalive, keepalive_timeout=keepalive_timeout,
                          request_timeout=request_timeout)
    # a command stopped by Ctrl-C or SIGTERM drops its connection at once instead of
    # waiting up to 2 s for the closing handshake (the node handles a dropped link)
    net = dataclasses.replace(net, shield_close=False)
    process = isinstance(ctx.obj, dict) and bool(ctx.obj.get("process"))  # cli.__main__.run
    ctx.obj = AppContext(home=home.expanduser(), out=Output(json_mode), net=net,
                         connect_timeout=connect_timeout, process=process)


def _register() -> None:
    from . import (
        basics,
        contacts,
        contacts_more,
        daemon,
        devices,
        group,
        group_more,
        history,
        identity,
        init,
        link,
        messaging,
        outbox,
        receive,
        requests,
        settings,
    )

    main.add_command(init.init)
    main.add_command(link.link)
    main.add_command(devices.devices)
    main.add_command(identity.id_)
    main.add_command(identity.verify)
    main.add_command(history.history)
    main.add_command(contacts.contacts)
    main.add_command(messaging.send)
    main.add_command(receive.recv)
    main.add_command(group.group)
    main.add_command(daemon.daemon)
    main.add_command(outbox.outbox)
    for command in (basics.react, basics.edit, basics.delete, basics.read, basics.typing,
                    basics.disappear, requests.requests, settings.settings):
        main.add_command(command)
    for command in contacts_more.COMMANDS:
        contacts.contacts.add_command(command)
    for command in group_more.COMMANDS:
        group.group.add_command(command)
    _leaves_take_home(main)


def _leaves_take_home(parent: click.Group) -> None:
    for command in parent.commands.values():
        if isinstance(command, click.Group):
            _leaves_take_home(command)
        else:
            home_option(command)


_register()
