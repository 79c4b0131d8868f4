"""``wa-cli group leave GROUP | rename GROUP NEW_NAME | promote GROUP MEMBER`` (added to the
``group`` group; primary device). See :mod:`cli.features.group_admin`."""

from __future__ import annotations

import click

from cli.commands._common import AppContext, check_name, json_option, state_of
from cli.commands.group import _change, _resolve
from cli.features.group_admin import leave_group, promote_member, rename_group


@click.command("leave")
@click.argument("name", metavar="GROUP")
@json_option
@click.pass_obj
def leave(app: AppContext, name: str) -> None:
    """Leave GROUP: the members are told, and you read nothing sent afterwards (the
    last admin promotes someone first)."""
    _change(app, leave_group, name)


@click.command("rename")
@click.argument("name", metavar="GROUP")
@click.argument("new_name")
@json_option
@click.pass_obj
def rename(app: AppContext, name: str, new_name: str) -> None:
    """Rename GROUP to NEW_NAME (admins)."""
    check_name(new_name, "NEW_NAME")
    _change(app, rename_group, name, new_name)


@click.command("promote")
@click.argument("name", metavar="GROUP")
@click.argument("member")
@json_option
@click.pass_obj
def promote(app: AppContext, name: str, member: str) -> None:
    """Make MEMBER an admin of GROUP (admins)."""
    with state_of(app, readonly=True) as state:
        user_id = _resolve(state, member)
    _change(app, promote_member, name, user_id)


COMMANDS = (leave, rename, promote)
"""Added to ``wa-cli group`` by :mod:`cli.commands`."""
