"""``wa-cli settings [--receipts on|off] [--requests hold|show]``: this device's messaging
settings (:mod:`cli.session.prefs`; no network)."""

from __future__ import annotations

import click

from cli.commands._common import AppContext, json_option, state_of


@click.command()
@click.option("--receipts", type=click.Choice(["on", "off"]),
              help="Send delivery receipts on receipt and read receipts on 'wa-cli read' "
                   "(end-to-end encrypted).")
@click.option("--requests", "requests_", type=click.Choice(["hold", "show"]),
              help="hold: a stranger's messages and group invitations from non-contacts "
                   "wait in 'wa-cli requests' until accepted; show: shown like any message.")
@json_option
@click.pass_obj
def settings(app: AppContext, receipts: str | None, requests_: str | None) -> None:
    """Show or change this device's messaging settings (both off by default)."""
    with state_of(app) as state:
        prefs = state.prefs
        if receipts is not None or requests_ is not None:
            if receipts is not None:
                prefs.receipts = receipts == "on"
            if requests_ is not None:
                prefs.hold_requests = requests_ == "hold"
            state.save()
        obj = {"receipts": "on" if prefs.receipts else "off",
               "requests": "hold" if prefs.hold_requests else "show",
               "timers": dict(prefs.timers), "blocked": len(prefs.blocked)}
    app.out.emit(obj, f"receipts {obj['receipts']}\nrequests {obj['requests']}\n"
                      f"disappearing timers {len(obj['timers'])}\nblocked users {obj['blocked']}")
