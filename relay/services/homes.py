"""Where a user is served right now: the ring's home, or, during a reshape, the old home
until the user's handoff is done (docs/protocol.md, "Handoff").

A node runs with the new cluster file (its :class:`~relay.config.ring.Ring`) and,
while a reshape is unfinished, the previous one. For a user ``u`` with old home
``O`` and new home ``N``:

* at ``O``, ``u`` is *outgoing* while ``O`` still holds ``u``'s state: ``O`` serves
  ``u`` as its home until the handoff of ``u`` is done;
* at ``N``, ``u`` is *incoming* until ``O`` said ``handoff_done`` for ``u`` (or
  ``handoff_complete`` for the whole ring): ``N`` sends requests for ``u`` on to
  ``O`` and answers ``u``'s devices ``moved`` to ``O``;
* every other node routes ``u`` to ``N`` (the ring), which passes it on.

While ``u``'s state is being copied, writes for ``u`` at ``O`` wait (:meth:`Homes.hold`).

:class:`Homes` offers what the services used of the ring (``home``, ``node``,
``nodes``, ``version``) with those rules applied; ``nodes`` and ``node`` cover
both rings, so links and peer authentication include nodes being removed.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager

import trio

from relay.config.ring import NodeInfo, Ring


class Homes:
    """The effective home of every user at one node.

    Args:
        node_id: this node's id.
        ring: the current cluster ring.
        previous: the ring before an unfinished reshape, or ``None``.

    Attributes:
        ring, previous: as given. version: the current ring version (peers must agree).
        nodes: every node of both rings (by id).
        outgoing: ``{user_id: new home id}`` of users whose state is still here.
        done: users handed to this node (incoming no more).
        complete: old homes that finished handing users to this node.
        relaying: ``{old home id: parts}`` being passed on to that node right now.
    """

    def __init__(self, node_id: str, ring: Ring, previous: Ring | None = None) -> None:
        self.node_id = node_id
        self.ring = ring
        self.previous = previous
        self.version = ring.version
        union = {n.id: n for n in (*(previous.nodes if previous else ()), *ring.nodes)}
        self.nodes: tuple[NodeInfo, ...] = tuple(sorted(union.values(), key=lambda n: n.id))
        self._by_id = union
        self.outgoing: dict[str, str] = {}
        self.done: set[str] = set()
        self.complete: set[str] = set()
        self.relaying: dict[str, int] = {}  # old home -> parts being passed on to it now
        self._moving: dict[str, trio.Event] = {}
        self._holders: dict[str, int] = {}
        self._released: dict[str, trio.Event] = {}

    # ------------------------------------------------------------ lookups

    @property
    def me(self) -> NodeInfo:
        """This node's entry (of either ring)."""
        return self._by_id[self.node_id]

    @property
    def in_ring(self) -> bool:
        """False for a node that the reshape removes (it drains, then stops)."""
        return self.node_id in self.ring

    def node(self, node_id: str) -> NodeInfo | None:
        """The node ``node_id`` of either ring, or ``None``."""
        return self._by_id.get(node_id)

    def old_home(self, user_id: str) -> NodeInfo | None:
        """``user_id``'s home in the previous ring, if a reshape is unfinished."""
        return self.previous.home(user_id) if self.previous is not None else None

    def incoming(self, user_id: str) -> bool:
        """True if ``user_id`` is homed here by the ring but not yet handed over."""
        if self.previous is None or user_id in self.done:
            return False
        old = self.previous.home(user_id).id
        return (old != self.node_id and old not in self.complete
                and self.ring.home(user_id).id == self.node_id)

    def home(self, user_id: str) -> NodeInfo:
        """Where ``user_id`` is served now (see the module docstring)."""
        if user_id in self.outgoing:
            return self.me
        home = self.ring.home(user_id)
        if home.id == self.node_id and self.incoming(user_id):
            return self.previous.home(user_id)  # type: ignore[union-attr]
        return home

    def homed_at(self, user_id: str, node_id: str) -> bool:
        """True if ``node_id`` may speak for ``user_id``: its home in either ring, or
        where this node serves it now."""
        if self.ring.home(user_id).id == node_id or self.home(user_id).id == node_id:
            return True
        return self.previous is not None and self.previous.home(user_id).id == node_id

    # ------------------------------------------------------------ the write gate

    def moving(self, user_id: str) -> bool:
        """True while ``user_id``'s state is being copied away from this node."""
        return user_id in self._moving

    @asynccontextmanager
    async def hold(self, users: Iterable[str]) -> AsyncIterator[None]:
        """Run the block while none of ``users`` is being moved (waits for moves in
        progress; a move that starts meanwhile waits for the block to end)."""
        if self.previous is None:  # no reshape: nothing ever moves away (the fast path)
            yield
            return
        wanted = sorted(set(users))
        while True:
            busy = [self._moving[u] for u in wanted if u in self._moving]
            if not busy:
                break
            for event in busy:
                await event.wait()
        for u in wanted:
            self._holders[u] = self._holders.get(u, 0) + 1
        try:
            yield
        finally:
            for u in wanted:
                n = self._holders[u] - 1
                if n:
                    self._holders[u] = n
                else:
                    del self._holders[u]
                    released = self._released.pop(u, None)
                    if released is not None:
                        released.set()

    async def begin_move(self, user_id: str) -> None:
        """Stop new writes for ``user_id`` and wait until those in flight are done."""
        self._moving[user_id] = trio.Event()
        while self._holders.get(user_id):
            released = self._released.setdefault(user_id, trio.Event())
            await released.wait()

    def end_move(self, user_id: str, *, handed_over: bool) -> None:
        """Let writes for ``user_id`` go on: here (``handed_over`` false: the move was
        put off) or at the new home (this node no longer serves the user)."""
        if handed_over:
            self.outgoing.pop(user_id, None)
        event = self._moving.pop(user_id, None)
        if event is not None:
            event.set()
