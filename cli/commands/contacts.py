"""``wa-cli contacts add NAME USER_ID | list``: local aliases for user ids."""

from __future__ import annotations

import click

from cli.commands._common import AppContext, CliError, check_name, json_option, state_of
from cli.commands._route import Connect, run_routed
from cli.commands.requests import release, send_held_receipts
from cli.output import Output, escape
from cli.session.state import State
from relay.protocol import is_user_id


@click.group()
def contacts() -> None:
    """Manage local contact names (never sent to a relay)."""


@contacts.command("add")
@click.argument("name")
@click.argument("user_id")
@click.option("--force", is_flag=True,
              help="Let NAME name another user id, or rename the contact of USER_ID.")
@json_option
@click.pass_obj
def add(app: AppContext, name: str, user_id: str, force: bool) -> None:
    """Call USER_ID by NAME from now on.

    A name names one user id and a user id has one name: changing either needs
    --force (exit 1 without it, nothing changed). Your own user id cannot be a
    contact. A message request from USER_ID is accepted, as by 'requests accept'.
    """
    _check_contact(name, user_id)
    run_routed(app, "contactsAdd", {"name": name, "user_id": user_id, "force": force},
               add_contact)


def _check_contact(name: str, user_id: str) -> None:
    if not is_user_id(user_id):
        raise click.BadParameter("not a user id (52 lowercase base32 characters)",
                                 param_hint="USER_ID")
    if is_user_id(name):
        raise click.BadParameter("must not be a user id", param_hint="NAME")
    check_name(name, "NAME")


async def add_contact(state: State, out: Output, connect: Connect, name: str, user_id: str,
                      force: bool = False) -> None:
    """The core of ``contacts add`` (JSON-RPC ``contactsAdd``): call ``user_id`` ``name``.
    A message request of ``user_id`` waiting here is accepted as by ``requests accept``
    (:func:`cli.commands.requests.release`): its held messages go into history and
    their delivery receipts are sent.

    Raises:
        click.BadParameter: (exit 2) not a user id, a bad name, or this account.
        CliError: (exit 1) the name or the user id is taken and not ``force``.
    """
    _check_contact(name, user_id)
    if user_id == state.user_id:
        raise click.BadParameter("that is your own user id; a contact is another account",
                                 param_hint="USER_ID")
    old_id, old_name = state.contacts.get(name), state.alias_of(user_id)
    if old_id != user_id:
        if old_id is not None and not force:
            raise CliError(f"contact {name!r} already exists; to change it "
                           f"({old_id} -> {user_id}) run again with --force")
        if old_name is not None and not force:
            raise CliError(f"{user_id} is already your contact {old_name!r}; to rename it "
                           f"({old_name!r} -> {name!r}) run again with --force")
        if old_name is not None:
            del state.contacts[old_name]
        state.contacts[name] = user_id
    req = state.prefs.requests.get(user_id)
    released = release(state, user_id) if req is not None and req["kind"] == "user" else []
    if old_id != user_id or req is not None:
        await state.asave()
    await send_held_receipts(state, connect, released)
    out.emit({"name": name, "user_id": user_id}, f"{escape(name)} = {user_id}")
    if req is not None:
        n = len(released)
        out.note(f"accepted the message request of {escape(name)}: {n} held "
                 f"message{'s' * (n != 1)} now in history")


@contacts.command("list")
@json_option
@click.pass_obj
def list_(app: AppContext) -> None:
    """List contacts, one per line."""
    with state_of(app, readonly=True) as state:
        items = sorted(state.contacts.items())
    for name, user_id in items:
        app.out.emit({"name": name, "user_id": user_id}, f"{escape(name)}\t{user_id}")
    if not items and not app.out.json_mode:
        app.out.note("no contacts yet (wa-cli contacts add NAME USER_ID)")
