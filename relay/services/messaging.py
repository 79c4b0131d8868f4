"""Messaging between nodes: ``forward``, ``group_forward`` and ``forward_batch``.

A peer hands this node the parts of its users' sends for users homed here. A
``forward_batch`` is served item by item, in order: every ``forward`` /
``group_forward`` item is checked on its own (sender homed at the peer,
recipients homed here, device lists current) and all accepted items are
written with one ``enqueue_many`` (:meth:`relay.router.Router.store_parts`);
``notify`` items are served like a ``notify`` request. The answer,
``results {items}``, holds one ``ok`` or ``error`` per item.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from relay.errors import KNOWN_REFUSALS, RelayError, relay_error_from
from relay.protocol.frames import Forward, ForwardBatch, Frame, GroupForward, Notify, Ok, Results
from relay.services.base import Caller, Table

if TYPE_CHECKING:
    from relay.node import Node


def messaging_table(node: Node) -> Table:
    """Handlers of forwarded messages (peer links only)."""

    async def forward(caller: Caller, frame: Frame) -> Frame:
        assert isinstance(frame, Forward | GroupForward) and caller.peer_id is not None
        (refusal,) = await node.router.store_parts([frame], peer_id=caller.peer_id)
        if refusal is not None:
            raise refusal
        return Ok(id=frame.id)

    async def forward_batch(caller: Caller, frame: Frame) -> Frame:
        assert isinstance(frame, ForwardBatch) and caller.peer_id is not None
        answers: list[Frame | None] = [None] * len(frame.items)
        parts = [(i, f) for i, f in enumerate(frame.items) if isinstance(f, Forward | GroupForward)]
        results = await node.router.store_parts([f for _, f in parts], peer_id=caller.peer_id)
        for (i, _), refusal in zip(parts, results, strict=True):
            answers[i] = Ok(id=0) if refusal is None else refusal.to_frame(0)
        for i, item in enumerate(frame.items):
            if isinstance(item, Notify):
                answers[i] = await _notify(node, item, caller.peer_id)
        return Results(id=frame.id, items=answers)  # type: ignore[arg-type]

    return {Forward: forward, GroupForward: forward, ForwardBatch: forward_batch}


async def _notify(node: Node, item: Notify, peer_id: str) -> Frame:
    try:
        await node.changes.receive(item, peer_id)
    except KNOWN_REFUSALS as exc:
        err = relay_error_from(exc)
        assert isinstance(err, RelayError)
        return err.to_frame(0)
    return Ok(id=0)
