"""Sending a text the way a messenger does: to a contact or a group, over a connection
if one can be had, else into the local outbox (:mod:`cli.features.outbox`).

Used by both front ends: ``wa-cli send`` (which connects for the one message) and the
daemon (whose connection comes and goes).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass

import trio

from cli.errors import ConnectionFailed, ConnectionLost, SendUnknown
from cli.features import effects, group_messaging, outbox, payload, sending
from cli.session.session import Session
from cli.session.state import State

__all__ = ["Posted", "post_text"]

Connect = Callable[[], AbstractAsyncContextManager[Session]]


@dataclass(frozen=True)
class Posted:
    """The outcome of :func:`post_text`.

    Attributes:
        msg_id: the message's 16-byte id.
        status: ``"stored"``, ``"queued"`` (the relay's answer) or ``"pending"`` (kept in
            the local outbox).
        to: the recipient's user_id (1:1), else ``""``.
        group_id: the group's id in hex (group message), else ``""``.
        group: the group's name (group message), else ``""``.
        reason: why it is ``pending`` (the connection error), else ``""``.
    """

    msg_id: bytes
    status: str
    to: str = ""
    group_id: str = ""
    group: str = ""
    reason: str = ""


async def post_text(state: State, connect: Connect, text: str, *, to: str | None = None,
                    group: str | None = None, reply_to: bytes | None = None,
                    on_commit: Callable[[], None] | None = None) -> Posted:
    """Record ``text`` in the local history and send it to user ``to`` (a user_id) or to
    ``group`` (name or id) over a session from ``connect()``; if no connection can be
    had (``ConnectionFailed``) or it drops before the message left (``ConnectionLost``),
    keep it in the outbox (state saved) with status ``"pending"``.

    The text quotes ``reply_to`` (a 16-byte message id of the same conversation, checked
    by the caller) and carries the conversation's disappearing timer
    (:attr:`cli.session.prefs.Prefs.timers`); it is recorded the way every device
    records it (:func:`cli.features.effects.on_payload`), and the peer of a 1:1 text
    counts as accepted from now on (:mod:`cli.session.prefs`).

    ``on_commit()`` is called at the point of no return: when the request may leave
    (:attr:`cli.session.session.Session.commit_hook`) or the outbox takes the message.

    Raises:
        ValueError: ``text`` too long; neither or both of ``to`` and ``group``.
        GroupError: unknown group (nothing recorded).
        SendUnknown: the message left and no answer came (not kept: retry it with
            ``send --retry``, same id).
        SendFailed, RelayError, DeviceListRejected: as :func:`cli.features.sending.send_payload`.
        OSError: the state could not be saved.
    """
    if (to is None) == (group is None):
        raise ValueError("give a recipient or a group")
    if len(text) > payload.MAX_TEXT:
        raise ValueError(f"text is longer than {payload.MAX_TEXT} characters")
    msg_id, ts = os.urandom(16), sending.now_ms()
    if group is not None:
        record = state.groups.find(group)
        gid, conversation = record.state.group_id, record.state.hex_id
        posted = Posted(msg_id, "", group_id=record.state.hex_id, group=record.state.name)
    else:
        gid, conversation = None, to
        posted = Posted(msg_id, "", to=to)
        state.prefs.accepted.add(to)
    p = payload.TextPayload(msg_id, text, ts, state.name, conversation, reply_to,
                            state.prefs.timers.get(conversation, 0))
    plain = p.encode()
    effects.on_payload(state, state.user_id, state.device_id, p, peer=conversation,
                       group=(record.state.name, conversation) if gid is not None else None)
    try:
        async with connect() as session:
            session.commit_hook = on_commit
            if gid is not None:
                status = await group_messaging.send_group_payload(session, gid, msg_id, plain)
            else:
                status = await sending.send_payload(session, to, msg_id, plain)
    except SendUnknown:
        raise
    except (ConnectionFailed, ConnectionLost) as exc:
        if trio.current_effective_deadline() == -math.inf:
            raise  # cancelled (Ctrl-C): the link closing under it is not an outage
        if on_commit is not None:
            on_commit()
        outbox.keep(state, msg_id, plain, to=to or "", group_id=gid, ts=ts)
        await state.asave()
        return Posted(posted.msg_id, outbox.PENDING, posted.to, posted.group_id, posted.group,
                      str(exc))
    return Posted(posted.msg_id, status, posted.to, posted.group_id, posted.group)
