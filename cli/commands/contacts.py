"""``wa-cli contacts add NAME USER_ID | list``: local aliases for user ids."""

from __future__ import annotations

import click

from relay.protocol import is_user_id

from ..output import escape
from ._common import AppContext, check_name, failures, json_option, state_of


@click.group()
def contacts() -> None:
    """Manage local contact names (never sent to a relay)."""


@contacts.command("add")
@click.argument("name")
@click.argument("user_id")
@json_option
@click.pass_obj
def add(app: AppContext, name: str, user_id: str) -> None:
    """Call USER_ID by NAME from now on (replaces an existing NAME)."""
    if not is_user_id(user_id):
        raise click.BadParameter("not a user id (52 lowercase base32 characters)",
                                 param_hint="USER_ID")
    if is_user_id(name):
        raise click.BadParameter("must not be a user id", param_hint="NAME")
    check_name(name, "NAME")
    with state_of(app) as state, failures():
        state.contacts[name] = user_id
        state.save()
    app.out.emit({"name": name, "user_id": user_id}, f"{escape(name)} = {user_id}")


@contacts.command("list")
@json_option
@click.pass_obj
def list_(app: AppContext) -> None:
    """List contacts, one per line."""
    with state_of(app) as state:
        items = sorted(state.contacts.items())
    for name, user_id in items:
        app.out.emit({"name": name, "user_id": user_id}, f"{escape(name)}\t{user_id}")
    if not items and not app.out.json_mode:
        app.out.note("no contacts yet (wa-cli contacts add NAME USER_ID)")
