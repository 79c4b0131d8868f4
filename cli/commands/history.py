"""``wa-cli history [NAME|USER_ID] [--limit N]``: messages kept on this device (no network)."""

from __future__ import annotations

import click

from ..events import Message
from ..state import StateError
from ._common import AppContext, json_option, message_row, state_of


@click.command()
@click.argument("contact", metavar="[NAME|USER_ID]", required=False)
@click.option("--limit", type=click.IntRange(min=1), default=50, show_default=True,
              help="Show at most this many of the newest messages.")
@json_option
@click.pass_obj
def history(app: AppContext, contact: str | None, limit: int) -> None:
    """Show recent messages stored on this device, oldest first (also those a
    linked device received in its history sync). With --json each row has the
    shape of a 'wa-cli recv --json' line."""
    with state_of(app) as state:
        peer = None
        if contact is not None:
            try:
                peer = state.resolve(contact)
            except StateError as exc:
                raise click.BadParameter(str(exc), param_hint="NAME|USER_ID") from exc
        entries = [e for e in state.history if peer is None or e.get("peer") == peer][-limit:]
        names = {r.state.hex_id: r.state.name for r in state.groups.groups.values()}
        rows = []
        for e in entries:
            declared = e.get("from_name", "")
            msg = Message(bytes.fromhex(e["id"]), e.get("from", ""), e.get("from_device", 0),
                          e.get("direction", "in"), e.get("peer", ""), e.get("ts", 0),
                          e.get("type", "text"), e.get("text", ""), declared, declared,
                          names.get(e["group_id"], "?") if e.get("group_id") else None,
                          e.get("group_id"))
            rows.append(message_row(state, msg))
    for obj, human in rows:
        app.out.emit(obj, human)
    if not rows and not app.out.json_mode:
        app.out.note("no messages stored on this device")
