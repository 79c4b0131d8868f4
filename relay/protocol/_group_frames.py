"""Group frames: one sender-key ciphertext fanned out by the relays (docs/groups.md).

Re-exported by :mod:`relay.protocol.frames`, which is where to import them from.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ._frame_base import Frame, GroupRecipient


@dataclass(frozen=True, slots=True)
class GroupSend(Frame):
    """A sender-key (Megolm) group message: one ``body`` for every listed device.
    The sender's home splits the recipients by home node (``group_forward``);
    each home checks each member's device ids against its list (``stale_devices``)
    and queues the body for every device. Answered like ``send`` (``sent``)."""

    TYPE: ClassVar[str] = "group_send"
    msg_id: bytes
    body: bytes
    recipients: list[GroupRecipient]


@dataclass(frozen=True, slots=True)
class GroupForward(Frame):
    """Node-to-node part of a ``group_send`` for the users homed at the receiving node."""

    TYPE: ClassVar[str] = "group_forward"
    msg_id: bytes
    sender_user: str
    sender_device: int
    ts: int
    body: bytes
    recipients: list[GroupRecipient]
