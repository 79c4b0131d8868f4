"""``wa-cli requests [list] | accept KEY [--name NAME] | decline KEY [--block]``: message
requests (no network).

A stranger's messages (someone who is not a contact and was never written to or
accepted) and invitations to a group by a non-contact, with that group's messages,
are held on this device until accepted (see :mod:`cli.session.prefs`): ``recv`` announces
them (a ``request`` line) without showing them and sends no receipt. KEY is the
stranger's user id or the group id (hex). Accepting (``requests accept``, or
``contacts add`` for a user's request) releases the held messages into history and
sends their authors the ``delivered`` receipts held back (when receipts are on; never
``read``: that waits for ``wa-cli read``).
"""

from __future__ import annotations

import logging

import click
import trio

from cli.commands._common import AppContext, check_name, json_option, state_of
from cli.commands._route import Connect, run_routed
from cli.commands.history import _row
from cli.errors import ClientError
from cli.features import receipts
from cli.output import Output, escape, sender_label
from cli.session.state import State

log = logging.getLogger(__name__)

RECEIPT_TIMEOUT = 30.0  # seconds: bound on connecting and sending the held receipts


@click.group(invoke_without_command=True)
@click.pass_context
def requests(ctx: click.Context) -> None:
    """Message requests from strangers and group invitations from non-contacts."""
    if ctx.invoked_subcommand is None:
        ctx.invoke(list_)


def _held(state: State, key: str) -> list[dict]:
    return [e for e in state.history if e.get("held")
            and (e.get("group_id") == key or (not e.get("group_id") and e.get("from") == key))]


def _find(state: State, key: str) -> tuple[str, dict]:
    key = key.lower()
    hits = [k for k in state.prefs.requests if k.startswith(key)] if len(key) >= 8 else []
    if len(hits) != 1:
        raise click.BadParameter(f"no single waiting request matches {key!r} (see "
                                 "'wa-cli requests')", param_hint="KEY")
    return hits[0], state.prefs.requests[hits[0]]


@requests.command("list")
@json_option
@click.pass_obj
def list_(app: AppContext) -> None:
    """List what waits, one request per line (read-only: runs beside a daemon)."""
    with state_of(app, readonly=True) as state:
        rows = []
        for key, req in state.prefs.requests.items():
            n = len(_held(state, key))
            who = sender_label(None, req.get("declared", ""), req["from"])
            what = (f"group {escape(req.get('group') or '?')!r} (invited by {who})"
                    if req["kind"] == "group" else who)
            rows.append(({"key": key, "kind": req["kind"], "from": req["from"],
                          "declared_name": req.get("declared", ""), "group": req.get("group"),
                          "messages": n},
                         f"{key}\t{what}\t{n} message{'s' * (n != 1)}"))
    for obj, human in rows:
        app.out.emit(obj, human)
    if not rows and not app.out.json_mode:
        app.out.note("no message requests")


@requests.command("accept")
@click.argument("key")
@click.option("--name", help="Also add the stranger as a contact with this name.")
@json_option
@click.pass_obj
def accept(app: AppContext, key: str, name: str | None) -> None:
    """Accept a request: its held messages are shown now (their senders get delivery
    receipts), later ones as any other."""
    if name is not None:
        check_name(name, "--name")
    run_routed(app, "requestAccept", {"key": key, "name": name}, accept_request)


async def accept_request(state: State, out: Output, connect: Connect, key: str,
                         name: str | None = None) -> None:
    """The core of ``requests accept`` (JSON-RPC ``requestAccept``): the held messages
    are emitted (as ``history`` rows) and shown from now on; their authors get the
    ``delivered`` receipts held back (:func:`send_held_receipts`).

    Raises:
        click.BadParameter: (exit 2) no single request matches ``key``, bad or taken name.
    """
    if name is not None:
        check_name(name, "--name")
    key, req = _find(state, key)
    if name is not None and req["kind"] == "user":
        if name in state.contacts:
            raise click.BadParameter(f"contact {name!r} already exists", param_hint="--name")
        state.contacts[name] = key
    held = release(state, key)
    await state.asave()
    await send_held_receipts(state, connect, held)
    groups = {r.state.hex_id: r.state.name for r in state.groups.groups.values()}
    rows = [_row(state, e, groups) for e in held]
    for obj, human in rows:
        out.emit(obj, human)
    out.note(f"accepted {key}; {len(rows)} held message{'s' * (len(rows) != 1)} shown")


def release(state: State, key: str) -> list[dict]:
    """Accept the request waiting under ``key`` (a user id or group id in hex, exact) and
    release its held history entries (no longer ``held``; the state is not saved).

    Returns:
        The released entries, oldest first.

    Raises:
        KeyError: no request waits under ``key``.
    """
    state.prefs.accept(key)
    held = _held(state, key)
    for entry in held:
        del entry["held"]
        state.history_changed(entry)
    return held


async def send_held_receipts(state: State, connect: Connect, entries: list[dict]) -> int:
    """Send the ``delivered`` receipts held back for released ``entries`` (received
    text and file messages) to their authors, when this device sends receipts; best
    effort, as for received messages (:func:`cli.features.receipts.send_delivered`):
    a failure to connect or send is logged, not raised, within
    :data:`RECEIPT_TIMEOUT` seconds.

    Returns:
        How many messages the receipts name (0 when receipts are off or none apply).
    """
    by_author: dict[str, list[bytes]] = {}
    for entry in entries:
        if entry.get("direction") == "in" and entry.get("type", "text") in ("text", "file"):
            by_author.setdefault(entry["from"], []).append(bytes.fromhex(entry["id"]))
    if not state.prefs.receipts or not by_author:
        return 0
    try:
        with trio.move_on_after(RECEIPT_TIMEOUT):
            async with connect() as client:
                await receipts.send_delivered(client, by_author)
    except ClientError as exc:
        log.warning("delivery receipts for accepted messages not sent: %s", exc)
    return sum(len(ids) for ids in by_author.values())


@requests.command("decline")
@click.argument("key")
@click.option("--block", is_flag=True, help="Also block the stranger (or the inviter).")
@json_option
@click.pass_obj
def decline(app: AppContext, key: str, block: bool) -> None:
    """Decline a request: its held messages are removed from this device (a declined
    group is forgotten here; a later message asks again unless --block)."""
    run_routed(app, "requestDecline", {"key": key, "block": block}, decline_request)


async def decline_request(state: State, out: Output, connect: Connect, key: str,
                          block: bool = False) -> None:
    """The core of ``requests decline`` (JSON-RPC ``requestDecline``).

    Raises:
        click.BadParameter: (exit 2) no single request matches ``key``.
    """
    key, req = _find(state, key)
    del state.prefs.requests[key]
    held = {id(e) for e in _held(state, key)}
    keep = [e for e in state.history if id(e) not in held]
    state.history.clear()
    state.history.extend(keep)
    state.compact_history()
    if req["kind"] == "group":
        state.groups.groups.pop(bytes.fromhex(key), None)
    if block:
        state.prefs.blocked.add(req["from"])
    await state.asave()
    out.emit({"key": key, "declined": True, "blocked": block, "removed": len(held)},
             f"declined {key}" + (" and blocked" if block else ""))
