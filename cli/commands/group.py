"""``wa-cli group create NAME MEMBER... | add NAME MEMBER | remove NAME MEMBER | list | info NAME``
and the group half of ``wa-cli send --group NAME TEXT``.

Members are contact names or user_ids. Changes need the account key, so they
run on the primary device of an admin; ``create`` makes the creator the admin.
Every change is signed and sent to the members' devices over Olm; messages use
the sending device's sender key (see docs/groups.md).
"""

from __future__ import annotations

import click

from cli.commands._common import (
    AppContext,
    CliError,
    UnknownName,
    check_name,
    failures,
    json_option,
    state_of,
    user_label,
)
from cli.commands._events import lists_shown
from cli.commands._signals import run_interruptible
from cli.commands.sendtext import send_text
from cli.daemon.jsonrpc import USAGE_ERROR
from cli.daemon.remote import RemoteError, find_daemon
from cli.features.group_messaging import add_member, create_group, remove_member
from cli.features.payload import MAX_TEXT
from cli.output import escape
from cli.session.group_state import GroupState
from cli.session.state import State, StateError


def _resolve(state: State, member: str) -> str:
    try:
        return state.resolve(member)
    except StateError as exc:
        raise click.BadParameter(str(exc), param_hint="MEMBER") from exc


def group_json(state: State, g: GroupState) -> dict:
    """``{"group", "group_id", "version", "members": [{"user_id", "name", "admin"}],
    "admin", "member"}`` (``admin``/``member``: this account's role)."""
    return {
        "group": g.name, "group_id": g.hex_id, "version": g.version,
        "members": [{"user_id": u, "name": state.alias_of(u) or ("" if u != state.user_id
                                                                 else state.name),
                     "admin": u in g.admins} for u in g.members],
        "admin": state.user_id in g.admins, "member": state.user_id in g.members,
    }


def group_human(state: State, g: GroupState) -> str:
    """Several lines: name, id, version, then one member per line (``*`` = admin)."""
    lines = [f"{escape(g.name)}  (id {g.hex_id}, version {g.version})"]
    if state.user_id not in g.members:
        lines.append("  you are no longer a member")
    lines += [f"  {'*' if u in g.admins else ' '} {user_label(state, u)}  {u}" for u in g.members]
    return "\n".join(lines)


_RPC = {"create_group": ("groupCreate", ("name", "members")),
        "add_member": ("groupAdd", ("group", "member")),
        "remove_member": ("groupRemove", ("group", "member")),
        "leave_group": ("groupLeave", ("group",)),
        "rename_group": ("groupRename", ("group", "name")),
        "promote_member": ("groupPromote", ("group", "member"))}
"""JSON-RPC method and parameter names of each group change (docs/jsonrpc.md)."""


def _change(app: AppContext, op, *args) -> None:
    remote = find_daemon(app.home)
    if remote is not None:  # through the daemon of this home (docs/jsonrpc.md)
        name, keys = _RPC[op.__name__]
        with remote:
            try:
                answer = remote.call(name, dict(zip(keys, args, strict=True)))
            except RemoteError as exc:
                if exc.code == USAGE_ERROR:
                    reason = (exc.data or {}).get("reason", "unknown_contact")
                    raise UnknownName(exc.message, reason, "MEMBER" if reason ==
                                      "unknown_contact" else "GROUP") from exc
                raise CliError(f"daemon: {escape(exc.message)}") from exc
        app.out.emit(answer["group"], answer["text"])
        return
    with state_of(app) as state:
        async def run():
            async with app.connect(state) as client:
                return await op(client, *args)

        with failures(), lists_shown(app, state):
            g = run_interruptible(run)
        app.out.emit(group_json(state, g), group_human(state, g))


@click.group()
def group() -> None:
    """Groups: one sender-key encryption per message, fanned out by the relays."""


@group.command("create")
@click.argument("name")
@click.argument("members", nargs=-1, required=True, metavar="MEMBER...")
@json_option
@click.pass_obj
def create(app: AppContext, name: str, members: tuple[str, ...]) -> None:
    """Create group NAME with you (admin) and MEMBERs (contact names or user ids)."""
    check_name(name, "NAME")
    with state_of(app, readonly=True) as state:
        ids = list(dict.fromkeys(_resolve(state, m) for m in members))
    _change(app, create_group, name, ids)


@group.command("add")
@click.argument("name")
@click.argument("member")
@json_option
@click.pass_obj
def add(app: AppContext, name: str, member: str) -> None:
    """Add MEMBER to group NAME (admins, on the primary device)."""
    with state_of(app, readonly=True) as state:
        user_id = _resolve(state, member)
    _change(app, add_member, name, user_id)


@group.command("remove")
@click.argument("name")
@click.argument("member")
@json_option
@click.pass_obj
def remove(app: AppContext, name: str, member: str) -> None:
    """Remove MEMBER from group NAME; they cannot read anything sent afterwards."""
    with state_of(app, readonly=True) as state:
        user_id = _resolve(state, member)
    _change(app, remove_member, name, user_id)


@group.command("list")
@json_option
@click.pass_obj
def list_(app: AppContext) -> None:
    """List the groups this device knows (no network)."""
    with state_of(app, readonly=True) as state:
        items = sorted((r.state for r in state.groups.groups.values()), key=lambda g: g.name)
        for g in items:
            role = "admin" if state.user_id in g.admins else (
                "member" if state.user_id in g.members else "left")
            app.out.emit(
                {"group": g.name, "group_id": g.hex_id, "version": g.version,
                 "members": len(g.members), "role": role},
                f"{escape(g.name)}\t{len(g.members)} members\t{role}\t{g.hex_id}")
    if not items and not app.out.json_mode:
        app.out.note("no groups yet (wa-cli group create NAME MEMBER...)")


@group.command("info")
@click.argument("name")
@json_option
@click.pass_obj
def info(app: AppContext, name: str) -> None:
    """Show group NAME (or id): version, members, admins (no network)."""
    with state_of(app, readonly=True) as state, failures():
        g = state.groups.find(name).state
        app.out.emit(group_json(state, g), group_human(state, g))


def send_to_group(app: AppContext, name: str, text: str, reply_to: str | None = None) -> None:
    """``wa-cli send --group NAME [--reply-to MSG_ID] TEXT``: prints ``{"id", "status",
    "group", "group_id"}``."""
    if len(text) > MAX_TEXT:
        raise click.BadParameter(f"longer than {MAX_TEXT} characters", param_hint="TEXT")
    send_text(app, text, group=name, reply_to=reply_to)
