"""The daemon's JSON-RPC methods (docs/jsonrpc.md): one table, name -> handler.

A handler is ``async def handler(device, peer, params) -> result`` registered with
:func:`method`; it raises :class:`~cli.daemon.jsonrpc.RpcError` for an error answer
(:func:`errors` translates the client's errors). To add a method, write a handler
in this module (or in a module imported by :mod:`cli.daemon.server`) under
``@method("name")``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any

import trio

from cli.commands._events import render
from cli.commands.files import announced_file_row
from cli.commands.group import group_human, group_json
from cli.commands.history import _row as history_row
from cli.daemon.core import Device
from cli.daemon.jsonrpc import (
    INVALID_PARAMS,
    RUNTIME_ERROR,
    SEND_UNKNOWN,
    USAGE_ERROR,
    Handler,
    Peer,
    RpcError,
)
from cli.errors import ClientError, ConnectionFailed, SendUnknown
from cli.events import Message
from cli.features import actions, effects, outbox, receipts
from cli.features.actions import ActionError
from cli.features.group_messaging import add_member, create_group, remove_member
from cli.features.kinds import MAX_EMOJI
from cli.features.payload import MAX_TEXT
from cli.features.posting import post_text
from cli.session.group_state import GroupError
from cli.session.inbox import Pending
from cli.session.state import StateError

__all__ = ["METHODS", "bind", "errors", "method"]

Method = Callable[[Device, Peer, dict], Awaitable[Any]]
METHODS: dict[str, Method] = {}


def method(name: str) -> Callable[[Method], Method]:
    """Register ``fn`` as the JSON-RPC method ``name``."""

    def register(fn: Method) -> Method:
        METHODS[name] = fn
        return fn

    return register


def bind(device: Device) -> dict[str, Handler]:
    """The method table for one device, as :class:`~cli.daemon.jsonrpc.Peer` takes it."""
    return {name: (lambda peer, params, fn=fn: fn(device, peer, params))
            for name, fn in METHODS.items()}


@contextmanager
def errors() -> Iterator[None]:
    """Translate the client's errors into error answers: a message whose answer never
    came -> :data:`SEND_UNKNOWN` (``data.id``); other client, state and OS errors ->
    :data:`RUNTIME_ERROR` (``data.reason``: a :class:`cli.errors.LinkFailed`'s ``reason``)."""
    try:
        yield
    except SendUnknown as exc:
        raise RpcError(SEND_UNKNOWN, str(exc), {"id": exc.msg_id.hex()}) from exc
    except (ClientError, StateError) as exc:
        reason = getattr(exc, "reason", None)  # LinkFailed's own --json code
        raise RpcError(RUNTIME_ERROR, str(exc),
                       {"reason": reason} if isinstance(reason, str) else None) from exc
    except OSError as exc:
        raise RpcError(RUNTIME_ERROR, f"{exc.strerror or exc}") from exc


def _str(params: dict, key: str, *, required: bool = True) -> str | None:
    value = params.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, str):
        raise RpcError(INVALID_PARAMS, f"{key!r} must be a string")
    return value


def _int(params: dict, key: str, default: int) -> int:
    value = params.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise RpcError(INVALID_PARAMS, f"{key!r} must be a positive integer")
    return value


# ------------------------------------------------------------------ sending


def recipient(device: Device, params: dict) -> tuple[str | None, str | None]:
    """``(user_id, None)`` or ``(None, group)`` from the ``to`` / ``group`` params (one
    of the two) of a sending method.

    Raises:
        RpcError: -32602 neither or both; -32001 (``unknown_contact`` /
            ``unknown_group``) nobody of that name; -32000 a message to oneself
            without another device.
    """
    state = device.state
    to, group = _str(params, "to", required=False), _str(params, "group", required=False)
    if (to is None) == (group is None):
        raise RpcError(INVALID_PARAMS, "give either 'to' or 'group'")
    if to is not None:
        try:
            user_id = state.resolve(to)
        except StateError as exc:
            raise RpcError(USAGE_ERROR, str(exc), {"reason": "unknown_contact"}) from exc
        own = state.own_list()
        if user_id == state.user_id and own is not None and own.device_ids <= {state.device_id}:
            raise RpcError(RUNTIME_ERROR, "you have no other devices; nothing to send to yourself")
        return user_id, None
    try:
        state.groups.find(group)
    except GroupError as exc:
        raise RpcError(USAGE_ERROR, str(exc), {"reason": "unknown_group"}) from exc
    return None, group


@method("send")
async def send(device: Device, peer: Peer, params: dict) -> dict:
    """``{"to": NAME_OR_USER_ID | "group": NAME_OR_ID, "text": TEXT, "reply_to"?: MSG_ID}``
    -> ``{"id", "status": "stored"|"queued"|"pending", "to" | "group", "group_id"}``."""
    state = device.state
    text = _str(params, "text")
    reply_to = _str(params, "reply_to", required=False)
    user_id, group = recipient(device, params)
    if not text.strip() or len(text) > MAX_TEXT:
        raise RpcError(USAGE_ERROR, f"text must be 1 to {MAX_TEXT} characters, not blank",
                       {"reason": "bad_text"})
    quoted = None
    if reply_to is not None:
        entry = _target(device, reply_to, "bad_reply")
        conversation = user_id or state.groups.find(group).state.hex_id
        if effects.conversation_of(state, entry) != conversation:
            raise RpcError(USAGE_ERROR, "that message is of another conversation",
                           {"reason": "bad_reply"})
        quoted = bytes.fromhex(entry["id"])
    with errors():
        posted = await post_text(state, device.session_now, text, to=user_id, group=group,
                                 reply_to=quoted)
    if posted.status == outbox.PENDING:
        device.outbox_changed()
    if posted.group_id:
        return {"id": posted.msg_id.hex(), "status": posted.status, "group": posted.group,
                "group_id": posted.group_id}
    return {"id": posted.msg_id.hex(), "status": posted.status, "to": posted.to}


async def _client(device: Device):  # noqa: ANN202
    """The daemon's client, waiting for it while the daemon reconnects
    (:meth:`Device.live`); :data:`RUNTIME_ERROR` if there is still none."""
    try:
        return await device.live()
    except ConnectionFailed as exc:
        raise RpcError(RUNTIME_ERROR, f"{exc} right now") from exc


def _target(device: Device, msg_id: str, reason: str = "unknown_message") -> dict:
    """The history entry of ``msg_id`` (32 hex digits or a prefix of at least 8);
    :data:`USAGE_ERROR` (``data.reason``: ``reason``) if unknown, ambiguous or deleted."""
    try:
        return actions.find_message(device.state, msg_id)
    except ActionError as exc:
        raise RpcError(USAGE_ERROR, str(exc), {"reason": reason}) from exc


def _action_answer(result, entry: dict) -> dict:  # noqa: ANN001
    return {"id": result.msg_id.hex(), "status": result.status, "target": entry["id"]}


@method("sendReaction")
async def send_reaction(device: Device, peer: Peer, params: dict) -> dict:
    """``{"target": MSG_ID, "emoji": EMOJI}`` (``""`` removes this account's reaction) ->
    ``{"id", "status", "target"}`` (as ``wa-cli react --json``); needs the connection."""
    target, emoji = _str(params, "target"), _str(params, "emoji")
    if len(emoji) > MAX_EMOJI:
        raise RpcError(INVALID_PARAMS, f"'emoji' is at most {MAX_EMOJI} characters")
    entry = _target(device, target)
    with errors():
        result, _ = await actions.react(await _client(device), entry["id"], emoji)
    return {**_action_answer(result, entry), "reaction": emoji}


@method("edit")
async def edit(device: Device, peer: Peer, params: dict) -> dict:
    """``{"target": MSG_ID, "text": TEXT}`` -> ``{"id", "status", "target"}``: replace
    the text of one of this account's messages on every device (``wa-cli edit``)."""
    target, text = _str(params, "target"), _str(params, "text")
    if not text.strip() or len(text) > MAX_TEXT:
        raise RpcError(USAGE_ERROR, f"text must be 1 to {MAX_TEXT} characters, not blank",
                       {"reason": "bad_text"})
    entry = _target(device, target)
    with errors():
        try:
            result, _ = await actions.edit(await _client(device), entry["id"], text)
        except ActionError as exc:  # not this account's text message
            raise RpcError(USAGE_ERROR, str(exc), {"reason": "not_yours"}) from exc
    return _action_answer(result, entry)


@method("delete")
async def delete(device: Device, peer: Peer, params: dict) -> dict:
    """``{"target": MSG_ID}`` -> ``{"id", "status", "target"}``: delete one of this
    account's messages for everyone (``wa-cli delete``)."""
    entry = _target(device, _str(params, "target"))
    with errors():
        try:
            result, _ = await actions.delete(await _client(device), entry["id"])
        except ActionError as exc:
            raise RpcError(USAGE_ERROR, str(exc), {"reason": "not_yours"}) from exc
    return _action_answer(result, entry)


@method("sendReceipt")
async def send_receipt(device: Device, peer: Peer, params: dict) -> dict:
    """``{"to"?: NAME_OR_USER_ID | "group"?: NAME_OR_ID}`` (neither: every conversation)
    -> ``{"read": [MSG_ID]}``: mark the conversation's received messages read and send
    ``read`` receipts to their authors (``wa-cli read``; none when receipts are off)."""
    state = device.state
    to, group = _str(params, "to", required=False), _str(params, "group", required=False)
    if to is not None and group is not None:
        raise RpcError(INVALID_PARAMS, "give 'to' or 'group', not both")
    conversation = None
    if to is not None:
        conversation = user_param(device, params, "to")
    elif group is not None:
        try:
            conversation = state.groups.find(group).state.hex_id
        except GroupError as exc:
            raise RpcError(USAGE_ERROR, str(exc), {"reason": "unknown_group"}) from exc
    entries = receipts.unread(state.history, conversation)
    if entries:
        with errors():
            entries = await receipts.mark_read(await _client(device), conversation)
    return {"read": [e["id"] for e in entries]}


async def group_change(device: Device, op, *args) -> dict:  # noqa: ANN001
    """Run the group operation ``await op(client, *args)`` and answer
    ``{"group": <group info --json object>, "text": <its human lines>}``.

    Raises:
        RpcError: the operation's failure, mapped by :func:`errors`.
    """
    state = device.state
    with errors():
        g = await op(await _client(device), *args)
    return {"group": group_json(state, g), "text": group_human(state, g)}


def user_param(device: Device, params: dict, key: str) -> str:
    """The user id named by ``params[key]`` (a contact name or a user id).

    Raises:
        RpcError: ``INVALID_PARAMS`` without a string there; ``USAGE_ERROR`` (reason
            ``unknown_contact``) for a name that is no contact.
    """
    try:
        return device.state.resolve(_str(params, key))
    except StateError as exc:
        raise RpcError(USAGE_ERROR, str(exc), {"reason": "unknown_contact"}) from exc


@method("groupCreate")
async def group_create(device: Device, peer: Peer, params: dict) -> dict:
    """``{"name", "members": [NAME_OR_USER_ID]}`` -> ``{"group": {...}, "text"}``
    (the ``group info --json`` object and its human lines)."""
    members = params.get("members")
    if not isinstance(members, list) or not members:
        raise RpcError(INVALID_PARAMS, "'members' must be a non-empty list")
    ids = list(dict.fromkeys(user_param(device, {"m": m}, "m") for m in members))
    return await group_change(device, create_group, _str(params, "name"), ids)


@method("groupAdd")
async def group_add(device: Device, peer: Peer, params: dict) -> dict:
    """``{"group", "member"}`` -> as ``groupCreate``."""
    return await group_change(device, add_member, _str(params, "group"),
                               user_param(device, params, "member"))


@method("groupRemove")
async def group_remove(device: Device, peer: Peer, params: dict) -> dict:
    """``{"group", "member"}`` -> as ``groupCreate``."""
    return await group_change(device, remove_member, _str(params, "group"),
                               user_param(device, params, "member"))


@method("outbox")
async def outbox_(device: Device, peer: Peer, params: dict) -> list[dict]:
    """``{}`` -> what waits in the local outbox: ``[{"id", "to", "group_id", "ts"}]``."""
    return outbox.entries(device.state)


# ---------------------------------------------------------------- receiving


def _event_params(device: Device, sid: int, p: Pending) -> dict:
    shape: tuple[dict | None, str, bool] | None
    if isinstance(p.event, Message) and p.event.type == "file":  # with the file's name
        shape = (*announced_file_row(device.state, p.event), False)
    else:
        shape = render(device.state, p.event)
    if shape is None:
        obj, text, note = None, "", True
    else:
        obj, text, note = shape
    return {"subscription": sid, "event": obj, "text": text, "note": note,
            "maybe_shown": p.maybe_shown, "n": p.n}


MAX_SUBSCRIPTIONS = 16
"""``receive`` subscriptions one connection may hold at once."""


class _Confirmation:
    """The answer a confirming subscriber owes for the event it was handed last."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.taken: bool | None = None  # None: no answer (yet)
        self.done = trio.Event()


async def _first(*events: trio.Event) -> None:
    """Return once any of ``events`` is set."""
    async with trio.open_nursery() as nursery:
        async def wait(event: trio.Event) -> None:
            await event.wait()
            nursery.cancel_scope.cancel()

        for event in events:
            nursery.start_soon(wait, event)


@method("receive")
async def receive(device: Device, peer: Peer, params: dict) -> dict:
    """``{"confirm"?: bool}`` -> ``{"subscription": N}``; then one ``receive``
    notification per event (``{"subscription", "event": recv --json object | null,
    "text": human line, "note": bool, "maybe_shown": bool, "n": int}``), first what
    waits, until the connection closes or ``unsubscribe``. Without ``confirm`` an
    event counts as shown once written to the connection. With ``confirm`` (``wa-cli
    recv``), only once the subscriber answers ``shown {"subscription", "n"}``; the
    next event waits for that answer; ``"taken": false`` leaves the event waiting
    (and ends the subscription); a connection that ends without an answer leaves it
    waiting flagged ``maybe_shown``. At most :data:`MAX_SUBSCRIPTIONS` per connection
    (``RUNTIME_ERROR`` past them: a batch line of thousands would have every event
    written thousands of times while the other subscribers wait)."""
    if len(peer.subscriptions) >= MAX_SUBSCRIPTIONS:
        raise RpcError(RUNTIME_ERROR, f"at most {MAX_SUBSCRIPTIONS} subscriptions per "
                       "connection", {"reason": "too_many_subscriptions"})
    confirm = params.get("confirm", False)
    if not isinstance(confirm, bool):
        raise RpcError(INVALID_PARAMS, "confirm must be true or false")
    sid = 0

    async def write(p: Pending) -> bool | None:
        if not confirm:
            return await peer.notify("receive", _event_params(device, sid, p))
        slot = peer.confirming[sid] = _Confirmation(p.n)
        try:
            if not await peer.notify("receive", _event_params(device, sid, p)):
                return False
            await _first(slot.done, peer.closed)
            return slot.taken
        finally:
            peer.confirming.pop(sid, None)

    sid = device.subscribe(write)
    peer.subscriptions.add(sid)

    async def wake() -> None:
        device.want_show()

    peer.after_reply(wake)
    return {"subscription": sid}


@method("shown")
async def shown(device: Device, peer: Peer, params: dict) -> bool:
    """``{"subscription": N, "n": int, "taken"?: bool}`` -> ``true`` if it answered the
    event that confirming subscription was handed last (see ``receive``)."""
    sid = params.get("subscription")
    slot = peer.confirming.get(sid) if isinstance(sid, int) else None
    taken = params.get("taken", True)
    if not isinstance(taken, bool):
        raise RpcError(INVALID_PARAMS, "taken must be true or false")
    if slot is None or slot.n != params.get("n") or slot.done.is_set():
        return False
    slot.taken = taken
    slot.done.set()
    return True


@method("unsubscribe")
async def unsubscribe(device: Device, peer: Peer, params: dict) -> bool:
    """``{"subscription": N}`` -> ``true`` if it was this connection's subscription
    (an event it was handed and did not answer stays waiting, flagged ``maybe_shown``)."""
    sid = params.get("subscription")
    if not isinstance(sid, int) or sid not in peer.subscriptions:
        return False
    peer.subscriptions.discard(sid)
    slot = peer.confirming.get(sid)
    if slot is not None:
        slot.done.set()
    return device.unsubscribe(sid)


# ------------------------------------------------------------------ reading


@method("id")
async def id_(device: Device, peer: Peer, params: dict) -> dict:
    """``{}`` -> ``{"user_id", "device_id", "name", "home", "connected"}``."""
    s = device.state
    return {"user_id": s.user_id, "device_id": s.device_id, "name": s.name,
            "home": s.relay_url, "connected": device.client is not None}


@method("contacts")
async def contacts(device: Device, peer: Peer, params: dict) -> list[dict]:
    """``{}`` -> ``[{"name", "user_id"}]`` sorted by name."""
    return [{"name": n, "user_id": u} for n, u in sorted(device.state.contacts.items())]


@method("groups")
async def groups(device: Device, peer: Peer, params: dict) -> list[dict]:
    """``{}`` -> ``[{"name", "group_id", "version", "members", "admins"}]``."""
    return [{"name": r.state.name, "group_id": r.state.hex_id, "version": r.state.version,
             "members": list(r.state.members), "admins": list(r.state.admins)}
            for r in device.state.groups.groups.values()]


@method("devices")
async def devices(device: Device, peer: Peer, params: dict) -> list[dict]:
    """``{}`` -> this account's devices as last verified: ``[{"device_id", "name", "this"}]``."""
    own = device.state.own_list()
    if own is None:
        return []
    return [{"device_id": d.device_id, "name": d.name,
             "this": d.device_id == device.state.device_id} for d in own.devices]


@method("history")
async def history(device: Device, peer: Peer, params: dict) -> list[dict]:
    """``{"peer"?: NAME_OR_USER_ID, "limit"?: N (50)}`` -> the newest messages, oldest
    first, each shaped as a ``recv --json`` line."""
    state = device.state
    limit = _int(params, "limit", 50)
    who = _str(params, "peer", required=False)
    uid = None
    if who is not None:
        try:
            uid = state.resolve(who)
        except StateError as exc:
            raise RpcError(USAGE_ERROR, str(exc), {"reason": "unknown_contact"}) from exc
    entries = [e for e in state.history if uid is None or e.get("peer") == uid][-limit:]
    names = {r.state.hex_id: r.state.name for r in state.groups.groups.values()}
    return [history_row(state, e, names)[0] for e in entries]
