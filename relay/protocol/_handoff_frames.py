"""Node-to-node handoff frames: moving a user's home during a cluster reshape
(docs/protocol.md, "Handoff").

The old home sends, for one user at a time::

    handoff_put {user_id, start, reset, records, outbox}   -> ok    (one or more)
    handoff_media {user_id, media_id, size, offset, chunk} -> ok   (per chunk of each blob)
    handoff_done {user_id}                                  -> ok | error unavailable
    handoff_complete {ring_version}                         -> ok    (once, nothing more to send)

``records`` is the msgpack array of the user's state records ``[kind, device_id,
key, seq, ts, value]`` (see :func:`encode_records`), ``start`` the position of
the first one in the user's export; ``reset`` (first batch) replaces what the
new home held of the user. ``outbox`` carries encoded ``forward`` /
``group_forward`` frames the user sent that still wait in the old home's outbox.

Re-exported by :mod:`relay.protocol.frames`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import msgpack

from ._frame_base import Frame
from .codec import refuse_ext
from .errors import ErrorCode, RemoteProtocolError

RECORD_KINDS = frozenset({"list", "watcher", "seq", "fallback", "otk", "claimed", "item",
                          "dedupe"})
Record = tuple[str, int, str, int, float, bytes]
"""``(kind, device_id, key, seq, ts, value)``: one piece of a user's home state."""


@dataclass(frozen=True, slots=True)
class HandoffPut(Frame):
    """Old home -> new home: a batch of one user's state (answered ``ok`` once durable)."""

    TYPE: ClassVar[str] = "handoff_put"
    user_id: str
    start: int
    reset: bool
    records: bytes
    outbox: list[bytes]


@dataclass(frozen=True, slots=True)
class HandoffMedia(Frame):
    """Old home -> new home: one chunk (in order, from offset 0) of a complete media
    blob the user uploaded (answered ``ok`` once durable; chunks the new home already
    holds are acknowledged without being written again)."""

    TYPE: ClassVar[str] = "handoff_media"
    user_id: str
    media_id: bytes
    size: int
    offset: int
    chunk: bytes


@dataclass(frozen=True, slots=True)
class HandoffDone(Frame):
    """Old home -> new home: every batch of ``user_id`` was sent; the new home serves
    the user from now on (``ok``), or refuses with ``unavailable`` while it still has
    requests for the user in flight to the old home (the old home retries later)."""

    TYPE: ClassVar[str] = "handoff_done"
    user_id: str


@dataclass(frozen=True, slots=True)
class HandoffComplete(Frame):
    """Old home -> every node of the new ring: nothing more will be handed to you for
    the ring ``ring_version``."""

    TYPE: ClassVar[str] = "handoff_complete"
    ring_version: str


def encode_records(records: list[Record]) -> bytes:
    """The ``records`` field of a ``handoff_put``."""
    return msgpack.packb([list(r) for r in records], use_bin_type=True)


def decode_records(blob: bytes, max_len: int) -> list[Record]:
    """Inverse of :func:`encode_records`, checking every field.

    Raises:
        RemoteProtocolError: ``bad_frame`` for anything malformed.
    """
    try:
        rows = msgpack.unpackb(blob, raw=False, max_bin_len=max_len, max_str_len=max_len,
                               max_array_len=max(len(blob), 16), max_map_len=0,
                               ext_hook=refuse_ext)
    except (ValueError, msgpack.UnpackException) as exc:
        raise RemoteProtocolError(ErrorCode.BAD_FRAME, "unreadable handoff records") from exc
    out: list[Record] = []
    if not isinstance(rows, list):
        raise RemoteProtocolError(ErrorCode.BAD_FRAME, "handoff records must be an array")
    for row in rows:
        if not (isinstance(row, list) and len(row) == 6 and row[0] in RECORD_KINDS
                and type(row[1]) is int and isinstance(row[2], str) and type(row[3]) is int
                and isinstance(row[4], int | float) and isinstance(row[5], bytes)
                and 0 <= row[1] < 2**32 and 0 <= row[3] < 2**63):
            raise RemoteProtocolError(ErrorCode.BAD_FRAME, "malformed handoff record")
        out.append((row[0], row[1], row[2], row[3], float(row[4]), row[5]))
    return out
