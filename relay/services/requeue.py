"""Sending forwards again to where their recipients are served now: the outbox
entries a reshape moves with their sender, answered ``moved``, or queued for a
node that the reshape removes (docs/protocol.md, "Handoff")."""

from __future__ import annotations

import dataclasses
import time
from typing import TYPE_CHECKING

from relay.protocol import RemoteProtocolError, read_frame
from relay.protocol.frames import BounceBack, Envelope, Forward, GroupForward
from relay.protocol.stored import encode_bounce_body, encode_envelope

if TYPE_CHECKING:
    from relay.node import Node

OUTBOX_SCAN = 1 << 20
"""Most outbox entries looked at when a node starts a reshape."""


async def requeue(node: Node, parts: list[Forward | GroupForward]) -> None:
    """Send ``parts`` again, in order, each recipient to where it is served now:
    stored here, or queued in the outbox for its home (a part whose recipients
    now have several homes is split). A part refused here (e.g. ``stale_devices``)
    is bounced to its sending device, like a final refusal in the outbox.

    Raises:
        StorageFull, StorageUnavailable: not queued.
    """
    by_dest: dict[str, list[Forward | GroupForward]] = {}
    for part in parts:
        split: dict[str, list] = {}
        for r in part.recipients:
            split.setdefault(node.homes.home(r.user_id).id, []).append(r)
        for dest, recipients in split.items():
            by_dest.setdefault(dest, []).append(
                dataclasses.replace(part, recipients=recipients))  # type: ignore[type-var]
    for dest, group in by_dest.items():
        if dest == node.homes.node_id:
            refusals = await node.router.store_parts(group)  # type: ignore[arg-type]
            for part, refusal in zip(group, refusals, strict=True):
                if refusal is not None:
                    await _bounce(node, part, refusal.code.value, refusal.message)
        elif dest in node.federation.links:
            await node.outbox.put_many(group, dest)  # type: ignore[arg-type]


async def _bounce(node: Node, part: Forward | GroupForward, code: str, message: str) -> None:
    """Queue a ``bounce`` envelope for the part's sending device (here, or through the
    outbox to its home), once per ``(sender, msg_id, recipient)``."""
    recipient = part.recipients[0].user_id if part.recipients else ""
    env = Envelope(msg_id=part.msg_id, sender_user=part.sender_user,
                   sender_device=part.sender_device, ts=int(time.time() * 1000), kind="bounce",
                   body=encode_bounce_body(code, message, recipient))
    home = node.homes.home(part.sender_user).id
    node.log.info("a re-sent forward was refused (%s): bounced to its sender", code)
    if home != node.homes.node_id:
        await node.outbox.put(BounceBack(id=0, envelope=env), home)
        return
    seqs = await node.storage.enqueue(
        [(part.sender_user, part.sender_device, encode_envelope(env))],
        dedupe=b"requeue-bounce\0" + part.sender_user.encode() + b"\0" + part.msg_id
        + recipient.encode())
    if seqs is not None:
        node.registry.notify(part.sender_user, part.sender_device)


async def reroute_removed(node: Node) -> None:
    """Outbox entries for nodes that the reshape removes go to their recipients'
    homes now (a removed node stops once drained; nothing may wait for it)."""
    homes = node.homes
    limits = node.limits.for_peers()
    entries = [e for e in await node.storage.outbox_list(None, limit=OUTBOX_SCAN)
               if e.dest not in homes.ring and homes.node(e.dest) is not None]
    parts, gone = [], []
    for entry in entries:
        try:
            part = read_frame(entry.payload, limits)
        except RemoteProtocolError:
            continue
        if isinstance(part, Forward | GroupForward):
            parts.append(part)
            gone.append(entry)
    if parts:
        await requeue(node, parts)
        await node.storage.outbox_delete_many([e.outbox_id for e in gone])
        node.log.info("%d outbox entries for removed nodes re-sent to the new homes",
                      len(parts))
