"""Batched node-to-node frames: many forwards to one destination in one frame.

``forward_batch {items}`` carries, in order, ``forward``, ``group_forward`` and
``notify`` requests (each a whole frame map with ``id`` 0) for users homed at
the receiving node; it is answered ``results {items}``: one ``ok`` or ``error``
map (``id`` 0) per item, in the same order. The receiving node checks every item
on its own and commits all accepted ones in one group commit
(docs/protocol.md, "Batched federation").

Re-exported by :mod:`relay.protocol.frames`, which is where to import them from;
:func:`relay.protocol.frames.parse` and :func:`~relay.protocol.frames.to_wire`
convert the nested items.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ._frame_base import Envelope, Frame


@dataclass(frozen=True, slots=True)
class ForwardBatch(Frame):
    """Node-to-node: ``items`` are ``Forward`` / ``GroupForward`` / ``Notify`` frames
    (id 0), applied in order, each answered on its own in ``results``.

    ``queued: true`` (an outbox drain) says every item was already answered
    ``queued`` to its sending device: a recipient whose device list has only
    *lost* devices since the copies were made gets the copies of the devices it
    still has (the others are dropped) instead of a ``stale_devices`` bounce that
    the sender could only resend behind its later messages (docs/protocol.md,
    "Order", rule 6)."""

    TYPE: ClassVar[str] = "forward_batch"
    items: list[Frame]
    queued: bool | None = None


@dataclass(frozen=True, slots=True)
class BounceBack(Frame):
    """Node-to-node: queue ``envelope`` (kind ``bounce``, body msgpack ``{code,
    message, user_id}``) for its ``sender_user`` / ``sender_device``, homed at the
    receiving node: a message of that device which the recipient ``user_id``'s home
    (the sending node) could never deliver. Answered ``ok``."""

    TYPE: ClassVar[str] = "bounce"
    envelope: Envelope


@dataclass(frozen=True, slots=True)
class Results(Frame):
    """Answer to ``forward_batch``: one ``Ok`` or ``Error`` frame (id 0) per item, in order."""

    TYPE: ClassVar[str] = "results"
    items: list[Frame]
