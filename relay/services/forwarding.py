"""Per-destination forwarding lanes: the remote parts of sends travel in ``forward_batch``.

Each peer node has one *lane*: a FIFO of parts (``forward`` / ``group_forward``,
id 0) from every connection of this node, and one task that sends them. The
task takes everything queued (a group commit one level up), packs it into
``forward_batch`` frames of at most ``max_peer_frame`` bytes, sends one frame at
a time and waits for its ``results`` before sending the next, so the
destination applies the parts exactly in lane order.

A frame goes to the durable outbox instead (every part answered ``queued``)
when the destination has outbox entries pending (so nothing overtakes them),
when the link is down, or when no answer came within the timeout (the parts
may have been stored: the destination deduplicates the retry by
``(sender_user, msg_id)``). Per part, the destination's answer is kept:
``stored``, or its refusal (``stale_devices``, ``queue_full``, ...).
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Awaitable, Callable

import trio

from relay.errors import KNOWN_REFUSALS, RelayError, relay_error_from
from relay.protocol import Limits, write_frame
from relay.protocol.errors import ErrorCode
from relay.protocol.frames import (
    Devices,
    Error,
    ForwardBatch,
    GetDevices,
    Results,
    SignedDeviceList,
)
from relay.services.federation import Federation, LinkDown, request_within
from relay.services.outbox import Outbox
from relay.services.router import Outcome, Part, outcome_of

BATCH_HEADER = 64
"""Bytes, an upper bound of a ``forward_batch`` frame's own map around its items."""
MAX_ITEMS = 1024
"""Most parts in one ``forward_batch`` (the receiver's msgpack array limit is 4096)."""


class _Ticket:
    __slots__ = ("parts", "outcomes", "done")

    def __init__(self, parts: list[Part]) -> None:
        self.parts = parts
        self.outcomes: list[Outcome] = []
        self.done = trio.Event()

    async def wait(self) -> list[Outcome]:
        await self.done.wait()
        return self.outcomes


class _Lane:
    __slots__ = ("tickets", "wake", "sending")

    def __init__(self) -> None:
        self.tickets: deque[_Ticket] = deque()
        self.wake = trio.Event()
        self.sending = False


class Forwarding:
    """The forwarding lanes of one node, one per peer (run :meth:`run` in a nursery).

    Args:
        federation: the outgoing peer links.
        outbox: where parts go when the destination cannot take them now.
        limits: the node's size budget (frames are packed to ``max_peer_frame``).
        timeout: seconds to wait for a ``forward_batch``'s answer.
        log: for metadata-only log lines.
    """

    def __init__(
        self, federation: Federation, outbox: Outbox, *, limits: Limits, timeout: float,
        log: logging.Logger,
    ) -> None:
        self._federation = federation
        self._outbox = outbox
        self._max = limits.max_peer_frame
        self._timeout = timeout
        self._log = log
        self._lanes = {dest: _Lane() for dest in federation.links}
        #: Counters for tests and metrics: frames sent and parts carried.
        self.frames = 0
        self.parts = 0
        #: ``on_outcomes(dest, outcomes)`` after each lane round; the node counts them
        #: in metrics (``stored``, ``queued`` or the refusal's code, per part).
        self.on_outcomes: Callable[[str, list[Outcome]], None] = lambda dest, outcomes: None

    def submit(self, dest: str, parts: list[Part]) -> Callable[[], Awaitable[list[Outcome]]]:
        """Append ``parts`` to ``dest``'s lane; return ``wait``, which returns their
        outcomes in order once all are known (``"stored"``, ``"queued"`` or a
        :class:`RelayError`).

        Raises:
            KeyError: ``dest`` is not a peer of this node.
        """
        lane = self._lanes[dest]
        ticket = _Ticket(parts)
        lane.tickets.append(ticket)
        lane.wake.set()
        return ticket.wait

    def busy(self, dest: str) -> bool:
        """True while ``dest``'s lane holds parts not yet answered."""
        lane = self._lanes.get(dest)
        return lane is not None and (bool(lane.tickets) or lane.sending)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve every lane until cancelled."""
        async with trio.open_nursery() as nursery:
            for dest in self._lanes:
                nursery.start_soon(self._serve, dest)
            task_status.started()

    async def _serve(self, dest: str) -> None:
        lane = self._lanes[dest]
        while True:
            if not lane.tickets:
                await lane.wake.wait()
                lane.wake = trio.Event()
                continue
            tickets = list(lane.tickets)
            lane.tickets.clear()
            parts = [p for t in tickets for p in t.parts]
            outcomes: list[Outcome] = []
            lane.sending = True
            try:
                for chunk in self._pack(parts):
                    outcomes += await self._send(dest, chunk)
            finally:
                lane.sending = False
            self.on_outcomes(dest, outcomes)
            at = 0
            for ticket in tickets:
                ticket.outcomes = outcomes[at:at + len(ticket.parts)]
                at += len(ticket.parts)
                ticket.done.set()

    def _pack(self, parts: list[Part]) -> list[list[Part]]:
        chunks: list[list[Part]] = []
        run: list[Part] = []
        size = BATCH_HEADER
        for part in parts:
            n = len(write_frame(part))
            if run and (size + n > self._max or len(run) >= MAX_ITEMS):
                chunks.append(run)
                run, size = [], BATCH_HEADER
            run.append(part)
            size += n
        if run:
            chunks.append(run)
        return chunks

    async def _send(self, dest: str, parts: list[Part]) -> list[Outcome]:
        if self._outbox.has_pending(dest):
            return await self._queue(dest, parts)
        try:
            answer = await request_within(self._federation, dest,
                                          ForwardBatch(id=0, items=list(parts)), self._timeout)
        except LinkDown:
            return await self._queue(dest, parts)
        except RelayError as exc:  # too_large: cannot be carried at all
            return [exc] * len(parts)
        self.frames += 1
        self.parts += len(parts)
        if isinstance(answer, Results) and len(answer.items) == len(parts):
            outcomes = [outcome_of(a, dest) for a in answer.items]
            await self._refill_lists(dest, parts, outcomes)
            return outcomes
        if isinstance(answer, Error):
            return [RelayError.from_frame(answer)] * len(parts)
        self._log.warning("unexpected answer %r to a forward_batch from %s", answer.TYPE, dest)
        return [RelayError(ErrorCode.INTERNAL, f"unexpected answer from {dest}")] * len(parts)

    async def _refill_lists(self, dest: str, parts: list[Part], outcomes: list[Outcome]) -> None:
        """Fetch the device lists the destination left out of ``stale_devices`` refusals
        (to keep its ``results`` within the frame limit), one ``get_devices`` per user,
        within the forward timeout; a list that cannot be fetched stays out."""
        lists: dict[str, SignedDeviceList | None] = {}
        with trio.move_on_after(self._timeout):
            for part, outcome in zip(parts, outcomes, strict=True):
                if not (isinstance(outcome, RelayError)
                        and outcome.code is ErrorCode.STALE_DEVICES
                        and outcome.device_list is None and outcome.user_id is not None):
                    continue
                user_id = outcome.user_id
                if user_id not in lists:
                    lists[user_id] = None
                    try:
                        answer = await self._federation.request(
                            dest, GetDevices(id=0, user_id=user_id, watcher=part.sender_user))
                    except (LinkDown, RelayError):
                        answer = None
                    if isinstance(answer, Devices):
                        lists[user_id] = answer.device_list
                outcome.device_list = lists[user_id]

    async def _queue(self, dest: str, parts: list[Part]) -> list[Outcome]:
        try:
            await self._outbox.put_many(parts, dest)
        except KNOWN_REFUSALS as exc:
            err = relay_error_from(exc)
            assert err is not None
            return [err] * len(parts)
        return ["queued"] * len(parts)
