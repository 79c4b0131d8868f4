"""``wa-cli contacts remove NAME | block NAME|USER_ID | unblock NAME|USER_ID | blocked``
(added to the ``contacts`` group; no network).

A blocked user's messages (1:1 and in groups) are dropped by this device: decrypted
(so that sessions stay in step), acknowledged, never shown, and no receipt goes back.
The relay is not told (it cannot read who is blocked; blocking is per device).
"""

from __future__ import annotations

import click

from cli.commands._common import AppContext, json_option, state_of
from cli.output import escape
from cli.session.state import State
from relay.protocol import is_user_id


def _user(state: State, who: str) -> str:
    if who in state.contacts:
        return state.contacts[who]
    if is_user_id(who):
        return who
    raise click.BadParameter(f"unknown contact {who!r} and not a user id",
                             param_hint="NAME|USER_ID")


@click.command("remove")
@click.argument("name")
@json_option
@click.pass_obj
def remove(app: AppContext, name: str) -> None:
    """Forget contact NAME (its history stays; a later message from it is a message
    request again)."""
    with state_of(app) as state:
        user_id = state.contacts.pop(name, None)
        if user_id is None:
            raise click.BadParameter(f"unknown contact {name!r}", param_hint="NAME")
        state.prefs.accepted.discard(user_id)
        state.save()
    app.out.emit({"name": name, "user_id": user_id, "removed": True},
                 f"removed contact {escape(name)} ({user_id})")


def _set_blocked(app: AppContext, who: str, blocked: bool) -> None:
    with state_of(app) as state:
        user_id = _user(state, who)
        if user_id == state.user_id:
            raise click.BadParameter("that is your own account", param_hint="NAME|USER_ID")
        (state.prefs.blocked.add if blocked else state.prefs.blocked.discard)(user_id)
        state.save()
    app.out.emit({"user_id": user_id, "blocked": blocked},
                 f"{'blocked' if blocked else 'unblocked'} {escape(who)}")


@click.command("block")
@click.argument("who", metavar="NAME|USER_ID")
@json_option
@click.pass_obj
def block(app: AppContext, who: str) -> None:
    """Drop every message from NAME|USER_ID on this device from now on."""
    _set_blocked(app, who, True)


@click.command("unblock")
@click.argument("who", metavar="NAME|USER_ID")
@json_option
@click.pass_obj
def unblock(app: AppContext, who: str) -> None:
    """Show messages from NAME|USER_ID again (those dropped meanwhile are gone)."""
    _set_blocked(app, who, False)


@click.command("blocked")
@json_option
@click.pass_obj
def blocked(app: AppContext) -> None:
    """List the blocked user ids."""
    with state_of(app) as state:
        items = sorted(state.prefs.blocked)
        rows = [(u, state.alias_of(u)) for u in items]
    for user_id, alias in rows:
        app.out.emit({"user_id": user_id, "name": alias}, f"{user_id}\t{escape(alias or '')}")
    if not rows and not app.out.json_mode:
        app.out.note("nobody is blocked")


COMMANDS = (remove, block, unblock, blocked)
"""Added to ``wa-cli contacts`` by :mod:`cli.commands`."""
