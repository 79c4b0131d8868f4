"""``wa-cli``: the Click root group. Commands live in sibling modules.

Global options: ``--home DIR`` (env ``WA_HOME``, default ``~/.wa-cli``) and
``--json``, before the subcommand or after it (``wa-cli id --home DIR --json``). Exit codes: 0 ok, 1 runtime failure, 2 usage error, 130 interrupted
(Ctrl-C; ``recv --follow`` instead stops quietly with 0).
"""

from __future__ import annotations

import logging
from pathlib import Path

import click

from ..output import Output, escape
from ._common import DEFAULT_HOME, AppContext, home_option


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
@click.version_option(package_name="wa-relay", prog_name="wa-cli")
@click.pass_context
def main(ctx: click.Context, home: Path, json_mode: bool) -> None:
    """wa-cli: end-to-end encrypted messaging over wa-relay nodes."""
    handler = logging.StreamHandler()
    handler.setFormatter(_EscapingFormatter("wa-cli: %(message)s"))
    logging.basicConfig(level=logging.WARNING, handlers=[handler])
    ctx.obj = AppContext(home=home.expanduser(), out=Output(json_mode))


def _register() -> None:
    from . import contacts, devices, group, history, identity, init, link, messaging, receive

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
    _leaves_take_home(main)


def _leaves_take_home(parent: click.Group) -> None:
    for command in parent.commands.values():
        if isinstance(command, click.Group):
            _leaves_take_home(command)
        else:
            home_option(command)


_register()
