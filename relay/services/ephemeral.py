"""Ephemeral sends (``send {ephemeral: true}``): typing indicators and the like.

An ephemeral send is checked like any send (recipients well formed, device lists
current: ``stale_devices`` otherwise; its copies count against the ``send`` rate
limit, ``rate_limited`` beyond it) and then only *pushed*: each copy goes in a
``deliver`` item with ``seq`` 0 to its device if that device is connected and has
sent ``sync``; a device that is offline never gets it. Nothing is stored, queued,
deduplicated or put in an outbox, and the client acknowledges nothing (``seq`` 0 is
never acknowledged). Copies for users homed at other nodes go in one ``forward
{ephemeral: true}`` per home, asked once with a short deadline
(:data:`PEER_DEADLINE`); an unreachable home simply gets nothing. The answer is
``sent {status: "ephemeral"}`` in every case that passed the checks.

A home served by several processes over one shared storage (docs/operations.md,
"One home, several processes"): a recipient device may be connected to a sibling
process. Copies for devices not streaming here are handed to the siblings through
the storage's ``announce_ephemeral`` (PostgreSQL NOTIFY; nothing is stored), and each
sibling pushes those of its connected devices (:func:`push_copy`, called by
:class:`relay.services.siblings.Siblings`).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from relay.errors import RelayError
from relay.protocol import ErrorCode
from relay.protocol.frames import (
    Deliver,
    DeliverItem,
    Envelope,
    Error,
    Forward,
    Frame,
    Ok,
    Send,
    Sent,
)
from relay.services.base import Caller, Table
from relay.services.federation import LinkDown, request_within
from relay.services.router import now_ms, part_members
from storage import StorageUnavailable

if TYPE_CHECKING:
    from relay.node import Node

__all__ = ["PEER_DEADLINE", "ephemeral_table", "forward_from_peer", "push_copy", "push_forward"]

log = logging.getLogger(__name__)

PEER_DEADLINE = 2.0  # seconds a home of other recipients gets to take an ephemeral forward
STATUS = "ephemeral"


async def push_forward(node: Node, frame: Forward) -> int:
    """Check an ephemeral ``forward`` (all recipients homed here) and push its copies to
    the devices that are connected and syncing; returns how many were pushed.

    Raises:
        RelayError: as :meth:`relay.router.Router.check_local` (``stale_devices``, ...).
    """
    await node.router.check_local(frame.sender_user, frame.sender_device, part_members(frame))
    pushed = 0
    elsewhere = []
    for r in frame.recipients:
        for copy in r.copies:
            env = Envelope(msg_id=frame.msg_id, sender_user=frame.sender_user,
                           sender_device=frame.sender_device, ts=frame.ts, kind="olm",
                           body=copy.body)
            if push_copy(node.registry, r.user_id, copy.device_id, env):
                pushed += 1
            else:
                elsewhere.append((r.user_id, copy.device_id, env))
    announce = getattr(node.storage, "announce_ephemeral", None)
    if elsewhere and announce is not None and getattr(node.storage, "notifies", False):
        await _to_siblings(announce, elsewhere)
    return pushed


def push_copy(registry: Any, user_id: str, device_id: int, env: Envelope) -> bool:
    """Push ``env`` (``seq`` 0) to device ``(user_id, device_id)`` if it is connected
    to this process and streaming; whether it was."""
    session = registry.session(user_id, device_id)
    if session is None or not getattr(session, "streaming", False):
        return False
    return bool(session.push_nowait(Deliver(id=0, items=[DeliverItem(seq=0, envelope=env)])))


async def _to_siblings(announce: Any, copies: list[tuple[str, int, Envelope]]) -> None:
    """``storage.announce_ephemeral`` (a shared storage's, see
    ``storage.postgresql.PostgresStorage``), best effort."""
    try:
        await announce([(u, d, env.msg_id, env.sender_user, env.sender_device, env.ts,
                         env.body) for u, d, env in copies])
    except StorageUnavailable as exc:  # best effort, like every ephemeral copy
        log.info("ephemeral copies not handed to the other processes: %s", exc)


def ephemeral_table(node: Node) -> Table:
    """The handler of ``send {ephemeral: true}`` (device connections; other sends are
    routed in batches by the connection, :meth:`relay.router.Router.send_batch`)."""

    async def send(caller: Caller, frame: Frame) -> Frame:
        assert isinstance(frame, Send)
        if not frame.ephemeral:
            raise RelayError(ErrorCode.BAD_REQUEST, "only ephemeral sends are served here")
        if not frame.recipients:
            raise RelayError(ErrorCode.BAD_REQUEST, "a send needs at least one recipient")
        user_id, device_id = caller.device()
        # the abuse limits of any send (issue 11): copies count against the send bucket
        node.rates.take("send", sum(len(r.copies) for r in frame.recipients), account=user_id,
                        address=caller.address)
        homes: dict[str, list] = {}
        for r in frame.recipients:
            node.directory.check_user_id(r.user_id)
            homes.setdefault(node.homes.home(r.user_id).id, []).append(r)
        ts = now_ms()
        for dest, recipients in homes.items():
            part = Forward(id=0, msg_id=frame.msg_id, sender_user=user_id,
                           sender_device=device_id, ts=ts, recipients=recipients,
                           ephemeral=True)
            if dest == node.config.id:
                await push_forward(node, part)
                continue
            try:
                answer = await request_within(node.federation, dest, part, PEER_DEADLINE)
            except LinkDown:
                continue  # that home is unreachable: its users are not "online" for us
            if isinstance(answer, Error) and answer.code == ErrorCode.STALE_DEVICES.value:
                raise RelayError.from_frame(answer)
        return Sent(id=frame.id, status=STATUS)

    return {Send: send}


async def forward_from_peer(node: Node, caller: Caller, frame: Forward) -> Frame:
    """A peer's ephemeral ``forward``: its sender must be homed at the peer."""
    assert caller.peer_id is not None
    node.router.check_from_peer(frame.sender_user, caller.peer_id)
    await push_forward(node, frame)
    return Ok(id=frame.id)
