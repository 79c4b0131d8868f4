"""Shared pieces of the Click commands: context object, error translation, trio entry.

Exit codes (DESIGN.md): 0 ok, 1 runtime failure (:class:`CliError`: network,
refused by the relay, locked or missing home), 2 usage error (Click's
``UsageError``/``BadParameter``).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import click

from ..errors import ClientError
from ..output import Output
from ..state import StateError, open_state

DEFAULT_HOME = "~/.wa-cli"
CONNECT_TIMEOUT = 10.0


class CliError(click.ClickException):
    """A runtime failure; exit code 1, message on stderr."""

    exit_code = 1


@dataclass
class AppContext:
    """``ctx.obj`` of every command: the device home and the output mode."""

    home: Path
    out: Output


@contextmanager
def failures() -> Iterator[None]:
    """Translate the library's domain errors into :class:`CliError` (exit 1)."""
    try:
        yield
    except (ClientError, StateError) as exc:
        raise CliError(str(exc)) from exc
    except OSError as exc:
        raise CliError(f"{exc.strerror or exc}: {exc.filename or ''}".rstrip(": ")) from exc


@contextmanager
def state_of(app: AppContext):
    """Open (and lock) the device state of ``--home``, translating errors."""
    with failures(), open_state(app.home) as state:
        yield state



def json_option(command):
    """Add ``--json`` to a subcommand too (``wa-cli recv --json`` = ``wa-cli --json recv``)."""

    def enable(ctx: click.Context, param: click.Parameter, value: bool) -> bool:
        if value:
            ctx.find_object(AppContext).out.json_mode = True
        return value

    return click.option("--json", "json_flag", is_flag=True, expose_value=False, callback=enable,
                        is_eager=True, help="Same as the global --json.")(command)
