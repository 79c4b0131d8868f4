"""Replay detection for Megolm (group) messages: the message indices already decrypted
from one inbound session.

A relay (or anyone who kept an envelope) can deliver an old ``group`` envelope again.
Its message id is inside the ciphertext, so it comes back with the same id, and the
device's dedupe keys (the last :data:`cli.session.state.SEEN_LIMIT` ids) catch it
only while that id is still among them; the Megolm session, however, decrypts any
index at or after its first known one for as long as the device keeps it (up to
:data:`cli.session.groups.MAX_INBOUND` sessions). So each inbound session also
remembers the indices it decrypted (Matrix clients do the same): a second decryption
at one index is a replay and is dropped, never shown again.

Memory is bounded: at most :data:`MAX_INDICES` indices per session (an outbound
session encrypts at most ``ROTATE_MESSAGES``); past that, the lowest are folded into a
*floor* below which every index counts as seen (a message that late would be refused).
"""

from __future__ import annotations

MAX_INDICES = 1024
"""Indices remembered per inbound session above its floor."""


class IndexWindow:
    """The indices decrypted from one inbound session.

    Args:
        floor: every index below it counts as seen.
        indices: indices at or above ``floor`` seen so far.
    """

    __slots__ = ("floor", "indices")

    def __init__(self, floor: int = 0, indices: set[int] | None = None) -> None:
        self.floor = floor
        self.indices: set[int] = set(indices or ())

    def add(self, index: int) -> bool:
        """Record ``index`` (>= 0); ``False`` if it was seen already (a replay)."""
        if index < self.floor or index in self.indices:
            return False
        self.indices.add(index)
        if len(self.indices) > MAX_INDICES:
            lowest = sorted(self.indices)[:len(self.indices) - MAX_INDICES]
            self.indices.difference_update(lowest)
            self.floor = lowest[-1] + 1
        return True

    def to_list(self) -> list:
        """Msgpack-ready ``[floor, [index, ...]]``."""
        return [self.floor, sorted(self.indices)]

    @classmethod
    def from_list(cls, data: object) -> IndexWindow:
        """Inverse of :meth:`to_list`.

        Raises:
            ValueError: not such a list.
        """
        if not (isinstance(data, list) and len(data) == 2 and type(data[0]) is int
                and isinstance(data[1], list) and all(type(i) is int for i in data[1])):
            raise ValueError("malformed group message indices")
        return cls(data[0], set(data[1]))
