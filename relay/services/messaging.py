"""Messaging between nodes: ``forward``, ``group_forward``, ``bounce`` and ``forward_batch``.

A peer hands this node the parts of its users' sends for users homed here. A
``forward_batch`` is served in item order: every ``forward`` / ``group_forward``
item is checked on its own (sender homed at the peer, recipients homed here,
device lists current) and each run of consecutive accepted ones is written with
one ``enqueue_many`` (:meth:`relay.services.router.Router.store_parts`); a
``notify`` or ``bounce`` item is served like that request, after the items before
it and before those after it. A retryable refusal of a sending device's item keeps
its later items to the same devices out for the whole batch, across runs
(docs/protocol.md, "Order", rule 5). The answer, ``results {items}``, holds one
``ok`` or ``error`` per item. Forwards are counted against the peer's
``peer_forward`` token bucket (one token per copy); over it, every item is
answered ``rate_limited`` (retryable: the peer's outbox keeps them).

A ``bounce`` hands this node a ``bounce`` envelope for one of its own users'
devices: a message the sending node (the recipient's home) can never deliver.
It is accepted only for a sender homed here and a recipient (the body's
``user_id``) homed at the sending node, a 16-byte ``msg_id``, a listed sender
device and a body within ``max_envelope`` (like any envelope, it must fit a
``deliver`` frame), and queued once per ``(sender, msg_id, recipient)``, within
``max_queue``.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from relay.errors import KNOWN_REFUSALS, RelayError, relay_error_from
from relay.protocol import ErrorCode, write_frame
from relay.protocol.frames import (
    BounceBack,
    Error,
    Forward,
    ForwardBatch,
    Frame,
    GroupForward,
    Notify,
    Ok,
    Results,
)
from relay.protocol.stored import (
    BOUNCE_FROM_PEER,
    decode_bounce_body,
    encode_bounce_body,
    encode_envelope,
)
from relay.services.base import Caller, Table
from relay.services.ephemeral import forward_from_peer
from relay.services.router import Blocked
from storage import EnqueueRequest

MSG_ID_SIZE = 16

if TYPE_CHECKING:
    from relay.node import Node


def messaging_table(node: Node) -> Table:
    """Handlers of forwarded messages (peer links only)."""

    async def forward(caller: Caller, frame: Frame) -> Frame:
        assert isinstance(frame, Forward | GroupForward) and caller.peer_id is not None
        node.rates.take("peer_forward", copies([frame]), account=caller.peer_id)
        if isinstance(frame, Forward) and frame.ephemeral:
            return await forward_from_peer(node, caller, frame)
        (refusal,) = await node.router.store_parts([frame], peer_id=caller.peer_id)
        if refusal is not None:
            raise refusal
        return Ok(id=frame.id)

    async def forward_batch(caller: Caller, frame: Frame) -> Frame:
        assert isinstance(frame, ForwardBatch) and caller.peer_id is not None
        answers: list[Frame | None] = [None] * len(frame.items)
        parts = [f for f in frame.items if isinstance(f, Forward | GroupForward)]
        try:
            node.rates.take("peer_forward", copies(parts), account=caller.peer_id)
        except RelayError as exc:  # the peer's outbox keeps them and retries later
            return Results(id=frame.id, items=[exc.to_frame(0)] * len(frame.items))
        blocked: Blocked = {}
        run: list[tuple[int, Forward | GroupForward]] = []

        async def store_run() -> None:
            results = await node.router.store_parts([f for _, f in run], peer_id=caller.peer_id,
                                                    blocked=blocked, queued=bool(frame.queued))
            for (i, _), refusal in zip(run, results, strict=True):
                answers[i] = Ok(id=0) if refusal is None else refusal.to_frame(0)
            run.clear()

        for i, item in enumerate(frame.items):
            if isinstance(item, Forward | GroupForward):
                run.append((i, item))
                continue
            if run:
                await store_run()
            answers[i] = await _one(node, item, caller.peer_id)  # type: ignore[arg-type]
        if run:
            await store_run()
        return fit_results(frame.id, answers, node.limits.max_peer_frame)  # type: ignore[arg-type]

    async def bounce_back(caller: Caller, frame: Frame) -> Frame:
        assert isinstance(frame, BounceBack) and caller.peer_id is not None
        await store_bounce(node, frame, caller.peer_id)
        return Ok(id=frame.id)

    return {Forward: forward, GroupForward: forward, ForwardBatch: forward_batch,
            BounceBack: bounce_back}


def copies(parts: list[Forward | GroupForward]) -> int:
    """How many envelopes ``parts`` would queue (the ``peer_forward`` token cost)."""
    n = 0
    for part in parts:
        if isinstance(part, GroupForward):
            n += sum(len(r.device_ids) for r in part.recipients)
        else:
            n += sum(len(r.copies) for r in part.recipients)
    return max(1, n)


RESULTS_HEADER = 64
"""Bytes, an upper bound of a ``results`` frame's own map around its items."""
LIST_OMITTED = " (the list is omitted to keep the answer within the frame limit)"


def fit_results(request_id: int, answers: list[Frame], max_frame: int) -> Results:
    """``results {answers}`` within ``max_frame`` bytes: while it would be larger, the
    biggest ``stale_devices`` refusals lose their ``device_list`` (a list may be
    up to 64 KiB, and one batch holds up to 4096 items; an oversized
    ``results`` would break the peer link, and the whole batch would be retried
    forever). The sender's home fetches an omitted list itself."""
    sizes = [len(write_frame(a)) for a in answers]
    total = RESULTS_HEADER + sum(sizes)
    if total > max_frame:
        heavy = sorted((i for i, a in enumerate(answers)
                        if isinstance(a, Error) and a.device_list is not None),
                       key=lambda i: sizes[i], reverse=True)
        for i in heavy:
            if total <= max_frame:
                break
            slim = dataclasses.replace(answers[i], device_list=None,  # type: ignore[type-var]
                                       message=answers[i].message + LIST_OMITTED)  # type: ignore[union-attr]
            n = len(write_frame(slim))
            total += n - sizes[i]
            answers[i], sizes[i] = slim, n
    return Results(id=request_id, items=answers)


async def _one(node: Node, item: Notify | BounceBack, peer_id: str) -> Frame:
    try:
        if isinstance(item, Notify):
            await node.changes.receive(item, peer_id)
        else:
            await store_bounce(node, item, peer_id)
    except KNOWN_REFUSALS as exc:
        err = relay_error_from(exc)
        assert isinstance(err, RelayError)
        return err.to_frame(0)
    return Ok(id=0)


async def store_bounce(node: Node, frame: BounceBack, peer_id: str) -> None:
    """Check and queue a ``bounce`` from peer ``peer_id`` for a device homed here.

    Raises:
        RelayError: ``bad_request`` (not a bounce, sender not homed here, recipient
            not homed at the peer, unreadable body).
        StorageFull, StorageUnavailable: nothing stored.
    """
    env = frame.envelope
    if env.kind != "bounce":
        raise RelayError(ErrorCode.BAD_REQUEST, "a bounce carries a 'bounce' envelope")
    if len(env.msg_id) != MSG_ID_SIZE:
        raise RelayError(ErrorCode.BAD_REQUEST, f"msg_id must be {MSG_ID_SIZE} bytes")
    if len(env.body) > node.limits.max_envelope:  # it must fit a deliver frame like any other
        raise RelayError(ErrorCode.TOO_LARGE,
                         f"an envelope of {len(env.body)} bytes exceeds the limit of "
                         f"{node.limits.max_envelope} bytes")
    node.directory.check_user_id(env.sender_user)
    if not node.directory.is_home(env.sender_user):
        raise RelayError(ErrorCode.BAD_REQUEST, "the bounced sender is not homed at this node",
                         user_id=env.sender_user)
    try:
        code, message, recipient = decode_bounce_body(env.body)
    except ValueError as exc:
        raise RelayError(ErrorCode.BAD_REQUEST, "unreadable bounce body") from exc
    # whatever the peer wrote, this bounce is relayed from another node: the sender's
    # device resends nothing on it (issue 10, finding 5)
    env = dataclasses.replace(env, body=encode_bounce_body(code, message, recipient,
                                                           BOUNCE_FROM_PEER))
    node.directory.check_homed_at(recipient, peer_id, "recipient")
    entry = await node.directory.get_device_list(env.sender_user)
    if entry is None or env.sender_device not in entry[1].device_ids:
        raise RelayError(ErrorCode.BAD_REQUEST, "the bounced sender device is not listed",
                         user_id=env.sender_user)
    # charged to the peer (queue, account and peer quotas): else a peer could queue
    # any number of bounces of fresh msg_ids, up to max_envelope each, for any user
    charges, quota = node.queue_policy.quota_of_peer(peer_id)
    (seqs,) = await node.storage.enqueue_many([EnqueueRequest(
        [(env.sender_user, env.sender_device, encode_envelope(env))],
        dedupe=b"bounce-back\0" + env.sender_user.encode() + b"\0" + env.msg_id
        + recipient.encode(), max_queue=node.config.max_queue, charges=charges, quota=quota)])
    if isinstance(seqs, Exception):
        err = relay_error_from(seqs)
        if err is None:
            raise seqs
        if err.code is ErrorCode.QUOTA_EXCEEDED:
            err.retry_after_ms = node.queue_policy.retry_after_ms
        raise err
    if seqs is not None:
        node.registry.notify(env.sender_user, env.sender_device)
