"""Ciphertexts leave in the order they were encrypted (:class:`SendOrder`).

Concurrent sends of one client each encrypt (advancing the Olm or Megolm ratchet),
wait for the state to be durable (a group commit that many share, see
:class:`cli.vault.GroupCommit`) and only then write their frame. Woken together,
they would write in any order, so copies would reach a device out of ratchet order
(Olm keeps only a few skipped message keys; the design also promises per-device
order). A place in the order is taken right after encrypting, with no ``await``
in between, and a frame is written only once every earlier place was written or
given up.
"""

from __future__ import annotations

import trio

__all__ = ["SendOrder"]


class SendOrder:
    """Numbered places; :meth:`wait_turn` returns once all earlier places are :meth:`done`.

    Usage (from one or many tasks)::

        place = order.take()          # right after encrypting, no await in between
        try:
            await order.wait_turn(place)
            await write(frame)
        finally:
            order.done(place)         # written, failed or cancelled: let the next go

    Memory: one event per waiting place.
    """

    def __init__(self) -> None:
        self._next = 0  # the place take() hands out next
        self._turn = 0  # the lowest place not done yet
        self._done: set[int] = set()  # places done out of order, all > _turn
        self._waiting: dict[int, trio.Event] = {}

    def take(self) -> int:
        """A new place, after every place taken so far."""
        place = self._next
        self._next += 1
        return place

    async def wait_turn(self, place: int) -> None:
        """Wait until every place before ``place`` is done (returns at once if so).

        Cancellation: the wait ends; the caller still calls :meth:`done`.
        """
        if place <= self._turn:
            return
        event = self._waiting.setdefault(place, trio.Event())
        try:
            await event.wait()
        finally:
            if self._waiting.get(place) is event and not event.is_set():
                del self._waiting[place]

    def done(self, place: int) -> None:
        """Mark ``place`` written or given up (idempotent); wakes the next place in line."""
        if place < self._turn or place in self._done:
            return
        self._done.add(place)
        while self._turn in self._done:
            self._done.remove(self._turn)
            self._turn += 1
        event = self._waiting.pop(self._turn, None)
        if event is not None:
            event.set()
