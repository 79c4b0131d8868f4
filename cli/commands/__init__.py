"""``wa-cli``: the Click root group. Commands live in sibling modules.

Global options: ``--home DIR`` (env ``WA_HOME``, default ``~/.wa-cli``) and
``--json``, before the subcommand or after it (``wa-cli id --home DIR --json``); the
network settings ``--connect-timeout``, ``--request-timeout``, ``--keepalive`` and
``--keepalive-timeout`` (env ``WA_CONNECT_TIMEOUT``, ``WA_REQUEST_TIMEOUT``,
``WA_KEEPALIVE``, ``WA_KEEPALIVE_TIMEOUT``) before the subcommand. Exit codes: 0 ok, 1 runtime failure, 2 usage error, 130 interrupted
(Ctrl-C; ``recv --follow`` instead stops quietly with 0).
"""

from __future__ import annotations

import logging
from pathlib import Path

import click

from cli.commands._common import CONNECT_TIMEOUT, DEFAULT_HOME, AppContext, home_option
from cli.output import Output, escape
from cli.session.connection import REQUEST_TIMEOUT, client_settings
from relay.protocol.keepalive import DEFAULT_KEEPALIVE

_SECONDS = click.FloatRange(min=0, min_open=True)


class _EscapingFormatter(logging.Formatter):
    """Log lines on stderr with control characters escaped (warnings quote peers' data)."""

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 (logging API)
        return escape(super().formatMessage(record))


class _Root(click.Group):
    """The root group: Ctrl-C ends a command with exit code 130 (not Click's
    "Aborted!" and 1)."""

    def invoke(self, ctx: click.Context):  # noqa: ANN201 (Click's signature)
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt:
            click.echo("\ninterrupted", err=True)
            raise click.exceptions.Exit(130) from None


@click.group(cls=_Root, context_settings={"help_option_names": ["-h", "--help"]},
             epilog="Exit codes: 0 ok, 1 runtime failure (network, refused, locked or missing "
                    "home), 2 usage error, 130 interrupted (Ctrl-C; 'recv --follow' stops "
                    "quietly with 0).")
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
    logging.basicConfig(level=logging.WARNING, handlers=[handler])
    net = client_settings(keepalive=keepalive, keepalive_timeout=keepalive_timeout,
                          request_timeout=request_timeout)
    ctx.obj = AppContext(home=home.expanduser(), out=Output(json_mode), net=net,
                         connect_timeout=connect_timeout)


def _register() -> None:
    from . import (
        basics,
        contacts,
        contacts_more,
        devices,
        group,
        group_more,
        history,
        identity,
        init,
        link,
        messaging,
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
