"""``wa-cli outbox``: the messages kept on this device until a relay can be reached
(:mod:`cli.features.outbox`)."""

from __future__ import annotations

import click

from cli.commands._common import AppContext, json_option, state_of, user_label
from cli.features import outbox as outbox_feature
from cli.output import clock, escape


@click.command()
@json_option
@click.pass_obj
def outbox(app: AppContext) -> None:
    """List the messages waiting to be sent (no relay was reachable when they were
    sent); the next command that connects, or the daemon, sends them, once.
    Read-only: it runs beside a running command or daemon."""
    with state_of(app, readonly=True) as state:
        items = outbox_feature.entries(state)
        groups = {r.state.hex_id: r.state.name for r in state.groups.groups.values()}
        rows = []
        for e in items:
            to = (f"group {escape(groups.get(e['group_id'], e['group_id']))}" if e["group_id"]
                  else user_label(state, e["to"]))
            when = clock(e["ts"])
            rows.append((e, f"{when}  to {to}  id {e['id']}"))
    for obj, human in rows:
        app.out.emit(obj, human)
    if not rows and not app.out.json_mode:
        app.out.note("the outbox is empty")
