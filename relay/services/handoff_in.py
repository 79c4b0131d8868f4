"""The new home's side of the handoff (docs/protocol.md, "Handoff"): importing a
moving user's batches and blobs, serving the user once ``handoff_done`` came, and
recording that an old home has nothing more to hand over; :func:`handoff_table`, the
handlers of the handoff frames (:mod:`relay.services.handoff` is the old home's side)."""

from __future__ import annotations

import dataclasses
import math
import time
from typing import TYPE_CHECKING

from relay.errors import RelayError
from relay.protocol import (
    ErrorCode,
    Limits,
    RemoteProtocolError,
    read_frame,
    verify_device_list,
)
from relay.protocol._handoff_frames import Record, decode_records
from relay.protocol.frames import (
    Deliver,
    Error,
    Forward,
    Frame,
    GetDevices,
    GroupForward,
    HandoffComplete,
    HandoffDone,
    HandoffMedia,
    HandoffPut,
    Ok,
)
from relay.protocol.stored import encode_deliver, encode_envelope
from relay.services.base import Caller, Table
from relay.services.directory import unpack_list
from relay.services.federation import LinkDown, request_within
from relay.services.requeue import requeue
from storage import MediaConflict, MediaCorrupt, UserRecord

if TYPE_CHECKING:
    from relay.node import Node

SETTLE_TIMEOUT = 5.0
"""Seconds the old home may take to say whether it holds a user."""


@dataclasses.dataclass(slots=True)
class HandoffStats:
    """What this node handed over (out) and took over (in) since it started."""

    users: int = 0
    envelopes: int = 0
    bytes: int = 0
    users_in: int = 0


def _from_record(r: Record, now: float) -> UserRecord:
    """The record to import; a time after ``now`` (another node's clock, or a hostile
    old home's way to keep a queued item or a dedupe id forever: they expire by it)
    is taken as ``now``.

    Raises:
        ValueError: a time that is not a finite number.
    """
    if not math.isfinite(r[4]):
        raise ValueError("a record's time is not a finite number")
    return UserRecord(r[0], device_id=r[1], key=r[2], seq=r[3], ts=min(r[4], now), value=r[5])


def _check_list(user_id: str, r: UserRecord) -> None:
    """Verify a handed-over signed device list as ``put_devices`` would: the account
    signature of ``user_id`` and the version the record claims (a hostile old home
    must not plant a device in the user's list).

    Raises:
        ValueError: the list does not verify, or its version differs from ``r.seq``.
    """
    try:
        parsed = verify_device_list(unpack_list(r.value), user_id)
    except (RelayError, RemoteProtocolError) as exc:
        raise ValueError(f"device list: {exc.message}") from exc
    if parsed.version != r.seq:
        raise ValueError(f"device list v{parsed.version} stored as v{r.seq}")


def _check_item(r: UserRecord, limits: Limits) -> None:
    """Check a handed-over queued envelope as its device will read it: queued bytes go
    into ``deliver`` frames as they are (:func:`relay.protocol.stored.encode_deliver`),
    so anything but one envelope map as this node writes it (garbage, a map header
    that swallows the next items, trailing bytes, fields a device refuses) would make
    every ``deliver`` frame of the queue undecodable and block it for good.

    Raises:
        ValueError: not an envelope in stored form.
    """
    try:
        frame = read_frame(encode_deliver([(max(r.seq, 1), r.value)]), limits)
    except RemoteProtocolError as exc:
        raise ValueError(f"queued item {r.seq}: not an envelope ({exc.message})") from exc
    if (not isinstance(frame, Deliver) or len(frame.items) != 1
            or encode_envelope(frame.items[0].envelope) != r.value):
        raise ValueError(f"queued item {r.seq}: not an envelope in stored form")


class HandoffIn:
    """Receives users handed to this node.

    Args:
        node: the node. prefix: the marker prefix of this reshape. stats: counted into.
    """

    def __init__(self, node: Node, prefix: str, stats: HandoffStats) -> None:
        self._node = node
        self._homes = node.homes
        self._storage = node.storage
        self._prefix = prefix
        self.stats = stats

    def _check_sender(self, user_id: str, peer_id: str) -> None:
        homes = self._homes
        old = homes.old_home(user_id)
        if (old is None or old.id != peer_id or homes.ring.home(user_id).id != homes.node_id
                or (peer_id in homes.complete and user_id not in homes.done)):
            # it said it hands nothing more over, so the user is served here since
            # (created during the reshape, perhaps): a late batch would wipe (reset)
            # or plant state; a retry for a user handed over stays a no-op
            raise RelayError(ErrorCode.BAD_REQUEST,
                             "the user is not handed from that node to this one")

    async def receive_put(self, frame: HandoffPut, peer_id: str) -> None:
        """Import one batch (idempotent; ignored once the user is handed over).

        Raises:
            RelayError: ``bad_request`` (not a handoff from that node to this one,
                or that node already said ``handoff_complete``; malformed records);
                StorageError: nothing stored.
        """
        self._node.directory.check_user_id(frame.user_id)
        self._check_sender(frame.user_id, peer_id)
        if frame.user_id in self._homes.done:
            return
        try:
            now = time.time()
            records = [_from_record(r, now) for r in decode_records(
                frame.records, self._node.limits.max_peer_frame)]
            for r in records:
                if r.kind == "list":
                    _check_list(frame.user_id, r)
                elif r.kind == "item":
                    _check_item(r, self._node.limits)
            reset = frame.reset and frame.start == 0
            records = await self._bound_watchers(frame.user_id, records, reset)
            await self._storage.import_user(frame.user_id, records, reset=reset)
        except (RemoteProtocolError, ValueError) as exc:
            raise RelayError(ErrorCode.BAD_REQUEST, f"bad handoff batch: {exc}") from exc
        self._node.directory.forget(frame.user_id)
        if frame.outbox:
            await self._requeue(frame.user_id, frame.outbox)

    async def _bound_watchers(self, user: str, records: list[UserRecord],
                              reset: bool) -> list[UserRecord]:
        """``records`` without the new watchers beyond ``watchers_per_user`` (those the
        user holds here already stay, then this batch's most recently refreshed are
        kept; later batches' only while there is room): a hostile old home (or one with
        a larger bound) must not plant more watchers than the bound, each one told of
        every list change for ``watcher_ttl``. An old home with the same bound never
        loses one here.

        Raises:
            StorageError: the user's watchers could not be read.
        """
        watchers = [r for r in records if r.kind == "watcher"]
        if not watchers:
            return records
        held = set() if reset else set(await self._storage.watchers(user))
        new: dict[str, UserRecord] = {}
        for r in watchers:
            if r.key not in held and (r.key not in new or r.ts > new[r.key].ts):
                new[r.key] = r
        room = max(0, self._node.config.abuse.watchers_per_user - len(held))
        kept = {r.key for r in sorted(new.values(), key=lambda r: -r.ts)[:room]}
        return [r for r in records if r.kind != "watcher" or r.key in held or r.key in kept]

    async def _requeue(self, user: str, payloads: list[bytes]) -> None:
        """Queue the user's pending forwards here, each to its recipients' home now."""
        limits = self._node.limits.for_peers()
        parts: list[Forward | GroupForward] = []
        for payload in payloads:
            try:
                part = read_frame(payload, limits)
            except RemoteProtocolError as exc:
                raise RelayError(ErrorCode.BAD_REQUEST, "unreadable outbox entry") from exc
            if not isinstance(part, Forward | GroupForward) or part.sender_user != user:
                raise RelayError(ErrorCode.BAD_REQUEST, "not a forward of that user")
            parts.append(part)
        await requeue(self._node, parts)

    async def receive_media(self, frame: HandoffMedia, peer_id: str) -> None:
        """Store one chunk of a moving user's blob (chunks already held are skipped).

        Raises:
            RelayError: ``bad_request`` (see :meth:`receive_put`; a chunk after a gap;
                a blob whose hash does not match); StorageFull: not stored.
        """
        self._node.directory.check_user_id(frame.user_id)
        self._check_sender(frame.user_id, peer_id)
        if frame.user_id in self._homes.done:
            return
        held = await self._storage.media_status(frame.media_id)
        received = 0 if held is None else held.received
        if held is not None and (held.complete or received >= frame.offset + len(frame.chunk)):
            return
        if frame.offset != received:
            raise RelayError(ErrorCode.BAD_REQUEST,
                             f"media chunk at {frame.offset}, expected {received}")
        try:
            await self._storage.media_append(frame.media_id, frame.size, frame.offset,
                                             frame.chunk, owner=frame.user_id)
        except (MediaConflict, MediaCorrupt, ValueError) as exc:
            raise RelayError(ErrorCode.BAD_REQUEST, f"bad media chunk: {exc}") from exc

    async def receive_done(self, frame: HandoffDone, peer_id: str) -> None:
        """Serve the user from now on (durably).

        Raises:
            RelayError: ``bad_request`` (see :meth:`receive_put`); ``unavailable``
                while requests for users of that node are in flight to it.
        """
        self._node.directory.check_user_id(frame.user_id)
        self._check_sender(frame.user_id, peer_id)
        if frame.user_id in self._homes.done:
            return
        node = self._node
        if (self._homes.relaying.get(peer_id) or node.forwarding.busy(peer_id)
                or node.outbox.has_pending(peer_id)):
            raise RelayError(ErrorCode.UNAVAILABLE,
                             "requests are still in flight to the old home; try again")
        await self._storage.set_mark(f"{self._prefix}in/{frame.user_id}", b"1")
        self._homes.done.add(frame.user_id)
        self.stats.users_in += 1

    async def receive_complete(self, frame: HandoffComplete, peer_id: str) -> None:
        """Record that ``peer_id`` hands nothing more over for this ring.

        Raises:
            RelayError: ``bad_request`` for another ring version.
        """
        if frame.ring_version != self._homes.version:
            raise RelayError(ErrorCode.BAD_REQUEST, "another ring version")
        if peer_id not in self._homes.complete:
            await self._storage.set_mark(f"{self._prefix}complete/{peer_id}", b"1")
            self._homes.complete.add(peer_id)

    async def settle(self, user_id: str) -> None:
        """Before a device of ``user_id`` is sent on to its old home: ask the old home
        whether it holds the user; if it answers ``moved`` (a user created during the
        reshape), this node serves the user from now on. Unreachable: no change."""
        homes = self._homes
        if not homes.incoming(user_id):
            return
        old = homes.old_home(user_id)
        assert old is not None
        try:
            answer = await request_within(self._node.federation, old.id,
                                          GetDevices(id=0, user_id=user_id), SETTLE_TIMEOUT)
        except (LinkDown, RelayError):
            return
        if isinstance(answer, Error) and answer.code == ErrorCode.MOVED.value:
            homes.done.add(user_id)


def handoff_table(node: Node) -> Table:
    """Handlers of the handoff frames (peer links only)."""

    async def put(caller: Caller, frame: Frame) -> Frame:
        assert isinstance(frame, HandoffPut) and caller.peer_id is not None
        await node.handoff.incoming.receive_put(frame, caller.peer_id)
        return Ok(id=frame.id)

    async def done(caller: Caller, frame: Frame) -> Frame:
        assert isinstance(frame, HandoffDone) and caller.peer_id is not None
        await node.handoff.incoming.receive_done(frame, caller.peer_id)
        return Ok(id=frame.id)

    async def complete(caller: Caller, frame: Frame) -> Frame:
        assert isinstance(frame, HandoffComplete) and caller.peer_id is not None
        await node.handoff.incoming.receive_complete(frame, caller.peer_id)
        return Ok(id=frame.id)

    async def media(caller: Caller, frame: Frame) -> Frame:
        assert isinstance(frame, HandoffMedia) and caller.peer_id is not None
        await node.handoff.incoming.receive_media(frame, caller.peer_id)
        return Ok(id=frame.id)

    return {HandoffPut: put, HandoffMedia: media, HandoffDone: done,
            HandoffComplete: complete}
