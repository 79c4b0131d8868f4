"""``wa-cli settings [--receipts on|off] [--requests hold|show]``: this device's messaging
settings (:mod:`cli.session.prefs`; no network)."""

from __future__ import annotations

import click

from cli.commands._common import AppContext, json_option, state_of
from cli.commands._route import Connect, run_routed
from cli.output import Output
from cli.session.prefs import Prefs
from cli.session.state import State


@click.command()
@click.option("--receipts", type=click.Choice(["on", "off"]),
              help="Send delivery receipts on receipt and read receipts on 'wa-cli read' "
                   "(end-to-end encrypted; on by default).")
@click.option("--requests", "requests_", type=click.Choice(["hold", "show"]),
              help="hold: a stranger's messages and group invitations from non-contacts "
                   "wait in 'wa-cli requests' until accepted (the default); show: shown like any "
                   "message.")
@json_option
@click.pass_obj
def settings(app: AppContext, receipts: str | None, requests_: str | None) -> None:
    """Show or change this device's messaging settings (by default receipts on and
    requests hold)."""
    if receipts is None and requests_ is None:
        with state_of(app, readonly=True) as state:
            _show(state.prefs, app.out)
        return
    run_routed(app, "settings", {"receipts": receipts, "requests": requests_}, change_settings)


async def change_settings(state: State, out: Output, connect: Connect,
                          receipts: str | None = None, requests: str | None = None) -> None:
    """The core of ``settings`` (JSON-RPC ``settings``): set what is given, emit all.

    Raises:
        click.BadParameter: (exit 2) a value other than on|off, hold|show.
    """
    prefs = state.prefs
    if receipts not in (None, "on", "off"):
        raise click.BadParameter("must be on or off", param_hint="--receipts")
    if requests not in (None, "hold", "show"):
        raise click.BadParameter("must be hold or show", param_hint="--requests")
    if receipts is not None or requests is not None:
        if receipts is not None:
            prefs.receipts = receipts == "on"
        if requests is not None:
            prefs.hold_requests = requests == "hold"
        await state.asave()
    _show(prefs, out)


def _show(prefs: Prefs, out: Output) -> None:
    obj = {"receipts": "on" if prefs.receipts else "off",
           "requests": "hold" if prefs.hold_requests else "show",
           "timers": dict(prefs.timers), "blocked": len(prefs.blocked)}
    out.emit(obj, f"receipts {obj['receipts']}\nrequests {obj['requests']}\n"
                  f"disappearing timers {len(obj['timers'])}\nblocked users {obj['blocked']}")
