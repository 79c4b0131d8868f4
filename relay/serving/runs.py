"""A device connection's runs of sends, pipelined: run N+1 is routed while run N commits.

A run (consecutive ``send`` / ``group_send`` requests read together) is routed by
:meth:`relay.services.router.Router.send_batch`: checks, forwards to other homes,
then one ``enqueue_many`` for the parts homed here, then the answers. Before, the
connection took its next run only once the previous one was answered, so a send
read while its connection's previous run was committing waited for that commit
and then for one more (docs/benchmarks.md, "Session 5: paced latency": the
largest share of a paced message's 90th percentile). Here the next run starts as
soon as the previous one has *submitted* its local parts to the storage:

* run N+1 starts routing only once run N called ``submitted`` (right before its
  ``enqueue_many``, after every other home answered: docs/protocol.md, "Order",
  rule 2) or finished; on a storage that applies submissions in call order
  (``submits_in_call_order``: LMDB's group commit, :mod:`storage._group_commit`,
  "Submission order") N+1's parts are therefore applied after N's, in the same
  group commit or a later one, and its forwards enter each lane after N's;
* run N+1's answers are written after run N's (requests are answered in reading
  order, as before);
* at most :data:`MAX_RUNS` runs are in flight; a request other than a send waits
  until every run before it is answered (:meth:`Runs.drained`).

On a storage without ``submits_in_call_order`` (PostgreSQL, memory) every run is
answered before :meth:`Runs.start` returns, as before.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Awaitable, Callable

import trio

from relay.protocol.frames import Frame, GroupSend, Send

__all__ = ["MAX_RUNS", "Route", "Runs"]

MAX_RUNS = 2
"""Runs of one connection in flight at once (one committing, the next one routed)."""

Route = Callable[[list[Send | GroupSend], Callable[[], None] | None], Awaitable[list[Frame]]]
"""``await route(run, submitted)``: route one run and return its answers, in order,
calling ``submitted()`` (if given) right before its local parts are submitted."""


class Runs:
    """The runs of sends of one device connection.

    Args:
        route: routes one run (:data:`Route`; the connection's ``Router.send_batch``).
        answer: ``await answer(frames)`` writes a run's answers.
        nursery: where a run waits for its commit and its answers are written (the
            link's nursery: an exception there is the connection's bug).
        pipelined: whether the storage applies submissions in call order; False:
            each run is routed and answered within :meth:`start`.
        limit: most runs in flight (:data:`MAX_RUNS`).
    """

    def __init__(self, route: Route, answer: Callable[[list[Frame]], Awaitable[None]],
                 nursery: trio.Nursery, *, pipelined: bool, limit: int = MAX_RUNS) -> None:
        if limit < 1:
            raise ValueError(f"need at least one run in flight, not {limit}")
        self._route = route
        self._answer = answer
        self._nursery = nursery
        self._pipelined = pipelined
        self._limit = limit
        self._done: deque[trio.Event] = deque()  # runs in flight, oldest first

    @property
    def in_flight(self) -> int:
        """Runs started and not yet answered."""
        return len(self._done)

    async def start(self, run: list[Send | GroupSend]) -> None:
        """Start routing ``run``; return once the next run may start (its local
        parts are submitted, or it is answered).

        Raises:
            Exception: only for a bug (not pipelined: from routing; pipelined: in
                the nursery's task).
        """
        if not self._pipelined:
            await self._answer(await self._route(run, None))
            return
        while len(self._done) >= self._limit:
            await self._done[0].wait()
        before = self._done[-1] if self._done else None
        submitted, done = trio.Event(), trio.Event()
        self._done.append(done)
        self._nursery.start_soon(self._run, run, before, submitted, done)
        await submitted.wait()

    async def _run(self, run: list[Send | GroupSend], before: trio.Event | None,
                   submitted: trio.Event, done: trio.Event) -> None:
        try:
            answers = await self._route(run, submitted.set)
            submitted.set()  # (unless set already) nothing was stored here: the next may go
            if before is not None:
                await before.wait()
            await self._answer(answers)
        finally:
            submitted.set()
            done.set()
            self._done.remove(done)

    async def drained(self) -> None:
        """Return once every run started so far is answered."""
        while self._done:
            await self._done[-1].wait()
