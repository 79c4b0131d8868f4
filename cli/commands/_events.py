"""Printing what a device learns: receive events (messages, bounces, device-list and group
changes) and the device-list changes a send runs into."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from cli.client import Bounce, DevicesChanged, Message
from cli.commands._common import AppContext, message_row, user_label
from cli.events import Requested
from cli.features.group_receiving import GroupChanged, GroupForkSeen
from cli.output import (
    bounce_human,
    bounce_json,
    devices_changed_human,
    devices_changed_json,
    escape,
    request_human,
    request_json,
)
from cli.session.state import State
from relay.protocol import DeviceList


def group_changed_json(change: GroupChanged) -> dict:
    """The ``recv --json`` line of a group change::

        {"type": "group_changed", "group", "group_id", "version", "by", "added", "removed", "left"}
    """
    return {"type": "group_changed", "group": change.name, "group_id": change.group_id,
            "version": change.version, "by": change.actor, "added": list(change.added),
            "removed": list(change.removed), "left": change.left}


def group_changed_human(state: State, change: GroupChanged) -> str:
    """``alice added bob to team`` / ``alice removed you from team`` ... (users who are
    not contacts show as ``unknown abcdefghijkl…``; names escaped)."""
    by = user_label(state, change.actor)
    name = repr(escape(change.name))
    if change.version == 1 or (change.added and state.user_id in change.added):
        return f"{by} added you to group {name}"
    parts = [f"{by} added {user_label(state, u)} to {name}" for u in change.added]
    parts += [f"{by} removed {user_label(state, u)} from {name}" for u in change.removed]
    return "\n".join(parts) or f"group {name} changed (version {change.version})"


def group_fork_json(fork: GroupForkSeen) -> dict:
    """The ``recv --json`` line of a forked group history::

        {"type": "group_fork", "group", "group_id", "version", "held_by", "other_by", "from"}
    """
    return {"type": "group_fork", "group": fork.name, "group_id": fork.group_id,
            "version": fork.version, "held_by": fork.held_signer, "other_by": fork.other_signer,
            "from": fork.sender}


def group_fork_human(state: State, fork: GroupForkSeen) -> str:
    """A warning that a group's history forked (nothing more is sent to it)."""
    return (f"warning: group {escape(fork.name)!r} has two histories at version {fork.version} "
            f"(one signed by {user_label(state, fork.held_signer)}, one by "
            f"{user_label(state, fork.other_signer)}, sent by {user_label(state, fork.sender)}); "
            "kept the one held, nothing more is sent to this group")


def render(state: State, event) -> tuple[dict | None, str, bool] | None:  # noqa: ANN001 (an Event)
    """How a receive event is printed: ``(json object or None, human text, note)``.

    With ``--json`` the object is a line on stdout (if ``None``, the human text is a
    note on stderr); without, the human text goes to stderr if ``note``, else to
    stdout. ``None`` for events that print nothing (dropped envelopes are logged as
    warnings by the client; markers)."""
    if isinstance(event, Message):
        obj, human = message_row(state, event)
        return obj, human, False
    if isinstance(event, Bounce):
        return bounce_json(event), bounce_human(event), True
    if isinstance(event, DevicesChanged):
        return (devices_changed_json(event),
                devices_changed_human(event, own=event.user_id == state.user_id), True)
    if isinstance(event, GroupChanged):
        return group_changed_json(event), group_changed_human(state, event), True
    if isinstance(event, GroupForkSeen):
        return group_fork_json(event), group_fork_human(state, event), True
    if isinstance(event, Requested):
        return request_json(event), request_human(event), True
    return None


def show(app: AppContext, state: State, event) -> None:  # noqa: ANN001 (an Event)
    """Print one receive event (a message, bounce, device-list or group change), as
    :func:`render` says."""
    shape = render(state, event)
    if shape is None:
        return
    obj, human, note = shape
    if app.out.json_mode and obj is not None:
        app.out.emit(obj, human)
    elif note or app.out.json_mode:
        app.out.note(human)
    else:
        app.out.emit(obj or {}, human)


def list_changes(state: State, before: dict[str, DeviceList]) -> list[DevicesChanged]:
    """How the cached device lists of ``state`` differ from ``before`` (user_id -> list,
    see :func:`lists_shown`): one change per user whose list got a newer version, with
    the devices added and removed (a device whose keys changed counts as both), as
    :func:`cli.devices.device_list_notice` reports them on receive."""
    changes = []
    for user_id, cached in state.device_lists.items():
        old, new = before.get(user_id), cached.parsed
        if old is None or new.version <= old.version:
            continue
        was = {d.device_id: d for d in old.devices}
        now = {d.device_id: d for d in new.devices}
        rekeyed = sorted(i for i in now.keys() & was.keys()
                         if (now[i].curve25519, now[i].ed25519) != (was[i].curve25519,
                                                                   was[i].ed25519))
        added = sorted(now.keys() - was.keys()) + rekeyed
        removed = sorted(was.keys() - now.keys()) + rekeyed
        changes.append(DevicesChanged(user_id, state.alias_of(user_id) or "", new.version,
                                      tuple((i, now[i].name) for i in added),
                                      tuple((i, was[i].name) for i in removed)))
    return changes


@contextmanager
def lists_shown(app: AppContext, state: State) -> Iterator[None]:
    """Around a send: print the device-list changes it learned (a ``stale_devices``
    answer makes the client fetch the new list, so the notice that comes later on
    ``recv`` finds nothing new). Same output as ``recv`` (a ``devices_changed`` line
    with --json, a note on stderr otherwise), printed even if the send fails."""
    before = {user_id: cached.parsed for user_id, cached in state.device_lists.items()}
    try:
        yield
    finally:
        for change in list_changes(state, before):
            show(app, state, change)


