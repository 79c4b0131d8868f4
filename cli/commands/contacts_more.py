"""``wa-cli contacts remove NAME | block NAME|USER_ID | unblock NAME|USER_ID | blocked``
(added to the ``contacts`` group; no network).

A blocked user's messages (1:1 and in groups) are dropped by this device: decrypted
(so that sessions stay in step), acknowledged, never shown, and no receipt goes back.
The relay is not told (it cannot read who is blocked; blocking is per device).
"""

from __future__ import annotations

import click

from cli.commands._common import AppContext, json_option, state_of
from cli.commands._route import Connect, run_routed
from cli.output import Output, escape
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
    run_routed(app, "contactsRemove", {"name": name}, remove_contact)


async def remove_contact(state: State, out: Output, connect: Connect, name: str) -> None:
    """The core of ``contacts remove`` (JSON-RPC ``contactsRemove``).

    Raises:
        click.BadParameter: (exit 2) no such contact.
    """
    user_id = state.contacts.get(name)
    if user_id is None:
        raise click.BadParameter(f"unknown contact {name!r}", param_hint="NAME")
    del state.contacts[name]
    state.prefs.accepted.discard(user_id)
    await state.asave()
    out.emit({"name": name, "user_id": user_id, "removed": True},
             f"removed contact {escape(name)} ({user_id})")


async def set_blocked(state: State, out: Output, connect: Connect, who: str,
                      blocked: bool) -> None:
    """The core of ``contacts block|unblock`` (JSON-RPC ``block``, ``unblock``).

    Raises:
        click.BadParameter: (exit 2) unknown contact and not a user id, or this account.
    """
    user_id = _user(state, who)
    if user_id == state.user_id:
        raise click.BadParameter("that is your own account", param_hint="NAME|USER_ID")
    (state.prefs.blocked.add if blocked else state.prefs.blocked.discard)(user_id)
    await state.asave()
    out.emit({"user_id": user_id, "blocked": blocked},
             f"{'blocked' if blocked else 'unblocked'} {escape(who)}")


@click.command("block")
@click.argument("who", metavar="NAME|USER_ID")
@json_option
@click.pass_obj
def block(app: AppContext, who: str) -> None:
    """Drop every message from NAME|USER_ID on this device from now on."""
    run_routed(app, "block", {"who": who, "blocked": True}, set_blocked)


@click.command("unblock")
@click.argument("who", metavar="NAME|USER_ID")
@json_option
@click.pass_obj
def unblock(app: AppContext, who: str) -> None:
    """Show messages from NAME|USER_ID again (those dropped meanwhile are gone)."""
    run_routed(app, "block", {"who": who, "blocked": False}, set_blocked)


@click.command("blocked")
@json_option
@click.pass_obj
def blocked(app: AppContext) -> None:
    """List the blocked user ids (read-only: runs beside a daemon)."""
    with state_of(app, readonly=True) as state:
        items = sorted(state.prefs.blocked)
        rows = [(u, state.alias_of(u)) for u in items]
    for user_id, alias in rows:
        app.out.emit({"user_id": user_id, "name": alias}, f"{user_id}\t{escape(alias or '')}")
    if not rows and not app.out.json_mode:
        app.out.note("nobody is blocked")


COMMANDS = (remove, block, unblock, blocked)
"""Added to ``wa-cli contacts`` by :mod:`cli.commands`."""
