"""Frames for linking a companion device (DESIGN.md "Linking"; docs/protocol.md).

Re-exported by :mod:`relay.protocol.frames`, which is where to import them from.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ._frame_base import Frame


@dataclass(frozen=True, slots=True)
class LinkOpen(Frame):
    """A new device opens a one-off provisioning mailbox (allowed before ``auth``).

    ``device_info`` is msgpack ``{ed25519, curve25519, ephemeral, name}`` (32-byte keys;
    ``ephemeral`` is an X25519 key for sealing the answer). The linking code commits
    to it by hash, so the relay cannot swap it. The node keeps the mailbox in memory
    while this connection stays open, at most ``expires_in`` seconds.
    """

    TYPE: ClassVar[str] = "link_open"
    device_info: bytes
    short: bool | None = None
    """``true``: a short mailbox id (2 bytes, written as a number in a word code) for a
    PAKE-authenticated link; ``device_info`` then carries the new device's SPAKE2
    message and the keys follow in ``link_reply`` (docs/protocol.md)."""


@dataclass(frozen=True, slots=True)
class LinkOpened(Frame):
    """Answer to ``link_open``: the mailbox id (16 bytes), its node, and seconds until it expires."""

    TYPE: ClassVar[str] = "link_opened"
    mailbox_id: bytes
    node_id: str
    expires_in: int


@dataclass(frozen=True, slots=True)
class LinkFetch(Frame):
    """The primary (authenticated) reads a mailbox's ``device_info``; forwarded to ``node_id``."""

    TYPE: ClassVar[str] = "link_fetch"
    node_id: str
    mailbox_id: bytes


@dataclass(frozen=True, slots=True)
class LinkInfo(Frame):
    """Answer to ``link_fetch``."""

    TYPE: ClassVar[str] = "link_info"
    device_info: bytes
    reply: bytes | None = None
    """What the new device posted with ``link_reply`` (a PAKE link), once it has."""


@dataclass(frozen=True, slots=True)
class LinkComplete(Frame):
    """The primary posts the sealed account material; the mailbox node pushes it
    as ``link_data`` to the waiting device and closes the mailbox (single use).
    Answer ``ok``, ``not_found`` for an unknown or expired mailbox, ``already_used`` for
    a used one (also ``more`` on a mailbox that was used: one approval per word code)."""

    TYPE: ClassVar[str] = "link_complete"
    node_id: str
    mailbox_id: bytes
    body: bytes
    more: bool | None = None
    """``true``: push ``link_data`` and keep the mailbox open (a PAKE link's first step)."""


@dataclass(frozen=True, slots=True)
class LinkReply(Frame):
    """The new device (before ``auth``, on the connection holding the mailbox) posts one
    answer to its own mailbox, which the primary reads with ``link_fetch`` (``reply``).
    Answer ``ok``; ``not_found`` without an open mailbox, ``bad_request`` if it already
    holds a reply, ``too_large`` above 4 KiB."""

    TYPE: ClassVar[str] = "link_reply"
    body: bytes


@dataclass(frozen=True, slots=True)
class LinkData(Frame):
    """Push (id 0) to the new device: sealed (X25519 sealed box) account material."""

    TYPE: ClassVar[str] = "link_data"
    body: bytes
