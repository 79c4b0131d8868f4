"""Per-device delivery: the connected-device registry and the pusher.

* Envelopes are stored in device queues in wire form
  (:func:`relay.protocol.stored.encode_envelope`), opaque to storage.
* :class:`DeviceRegistry` is owned by one node (no globals): it knows which
  devices are connected (to push ``key_count``) and wakes their pushers when
  new envelopes were enqueued.
* :class:`Pusher` streams one device's queue to its connection: the backlog,
  one ``synced``, then live envelopes, with at most ``window`` unacknowledged
  envelopes in flight. Whatever is ready goes out together: ``deliver`` frames
  of many envelopes each, packed to fit ``max_frame`` and built from the stored
  bytes without decoding them (:func:`relay.protocol.stored.pack_deliveries`).
  Envelopes enqueued more than ``queue_ttl`` seconds ago are skipped, not
  delivered (the next expiry sweep, or the device's next ack covering their
  seq, deletes them). A queue head that can never be delivered (its ``deliver``
  frame would exceed ``max_frame``, e.g. stored under an older configuration)
  is bounced to its sender and removed once everything before it was
  acknowledged, so it does not block the queue.
* A commit's hand-back may offer a device the envelopes it just stored
  (:meth:`DeviceRegistry.stored` -> :meth:`Pusher.offer`): a pusher that is idle
  and caught up (waiting for a wake-up, the offered seqs following its cursor
  without a gap, room in its window) writes them at once from the hand-back,
  without a wake-up of its task or a read of the queue; anything else is a
  wake-up as before (docs/protocol.md, "Order").
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Protocol

import trio

from relay.errors import KNOWN_REFUSALS
from relay.protocol import write_frame
from relay.protocol.frames import Envelope, Frame, Synced
from relay.protocol.stored import (
    decode_envelope,
    encode_bounce_body,
    encode_envelope,
    fits_alone,
    pack_deliveries,
)
from storage import QueueItem, Storage

DEFAULT_WINDOW = 256
READ_BATCH = 32  # envelopes read per storage call (each up to max_envelope bytes)

_Dev = tuple[str, int]

pack_envelope = encode_envelope
"""The stored form of an envelope (see :func:`relay.protocol.stored.encode_envelope`)."""
unpack_envelope = decode_envelope
"""Inverse of :func:`pack_envelope` (see :func:`relay.protocol.stored.decode_envelope`)."""


class Session(Protocol):
    """What the registry needs from a connected device's connection."""

    def push_nowait(self, frame: Frame) -> bool:
        """Queue a push frame without blocking; ``False`` if the connection is saturated."""

    def kick(self) -> None:
        """Close the connection soon (the device connected again elsewhere)."""

    def revoke(self) -> None:
        """The device was removed from its account's list: tell it and close soon."""

    def move(self, url: str) -> None:
        """The user's home moves to ``url`` (a reshape): tell the device and close soon."""

    def offer(self, items: list[tuple[int, float, bytes]]) -> bool:
        """Deliver just-committed ``(seq, ts, stored envelope)`` items now if the
        connection's pusher is idle and caught up (:meth:`Pusher.offer`); ``False``:
        not taken, wake the pusher instead."""


class DeviceRegistry:
    """Connected devices and wake-ups of their pushers, for one node.

    Wake-ups are edge-triggered events: a pusher takes :meth:`wakeup` *before*
    reading its queue and waits on it after finding nothing, so an enqueue
    between the read and the wait is never missed.
    """

    def __init__(self) -> None:
        self._sessions: dict[_Dev, Session] = {}
        self._events: dict[_Dev, list] = {}  # dev -> [event, watcher count]

    @contextmanager
    def register(self, user_id: str, device_id: int, session: Session) -> Iterator[None]:
        """Mark the device connected for the block; an older session of it is kicked."""
        dev = (user_id, device_id)
        old = self._sessions.get(dev)
        if old is not None and old is not session:
            old.kick()
        self._sessions[dev] = session
        slot = self._events.setdefault(dev, [trio.Event(), 0])
        slot[1] += 1
        try:
            yield
        finally:
            if self._sessions.get(dev) is session:
                del self._sessions[dev]
            slot[1] -= 1
            if slot[1] == 0 and self._events.get(dev) is slot:
                del self._events[dev]

    def sessions_of(self, user_id: str) -> list[Session]:
        """The connected sessions of every device of ``user_id``."""
        return [s for (u, _), s in self._sessions.items() if u == user_id]

    def session(self, user_id: str, device_id: int) -> Session | None:
        """The connected session of the device, or ``None``."""
        return self._sessions.get((user_id, device_id))

    def wakeup(self, user_id: str, device_id: int) -> trio.Event:
        """The event set by the next :meth:`notify` of a registered device."""
        slot = self._events.get((user_id, device_id))
        return slot[0] if slot is not None else trio.Event()

    def notify(self, user_id: str, device_id: int) -> None:
        """New envelopes were enqueued for the device: wake its pusher, if any."""
        slot = self._events.get((user_id, device_id))
        if slot is not None:
            slot[0].set()
            slot[0] = trio.Event()

    def stored(self, user_id: str, device_id: int, items: list[tuple[int, float, bytes]]) -> None:
        """A commit stored ``items``, ``(seq, ts, stored envelope)`` in seq order, in the
        device's queue (called from the commit's hand-back, before any other task
        sees the commit's answers): the connected session delivers them at once if its
        pusher is idle and caught up (:meth:`Session.offer`); otherwise :meth:`notify`."""
        session = self._sessions.get((user_id, device_id))
        offer = getattr(session, "offer", None)
        if offer is None or not offer(items):
            self.notify(user_id, device_id)

    def devices(self) -> list[_Dev]:
        """``(user_id, device_id)`` of every connected device."""
        return list(self._sessions)

    def notify_all(self) -> None:
        """Wake every registered pusher (each reads its queue once more)."""
        for user_id, device_id in list(self._events):
            self.notify(user_id, device_id)


class Pusher:
    """Streams one device's queue to its connection.

    Args:
        storage: where the queue lives.
        registry: wake-ups for new envelopes (the device must be registered).
        user_id, device_id: the device.
        send: coroutine writing one encoded frame on the connection (may block:
            backpressure).
        window: most delivered envelopes not yet acknowledged.
        max_frame: bytes, the largest frame the device accepts.
        queue_ttl: seconds; envelopes enqueued longer ago than that (by their
            stored ``ts``) are skipped, never delivered. ``None``: no limit.
        clock: wall-clock seconds since the epoch (tests inject their own).
        is_local: ``is_local(user_id)``: True if the user is homed at this node
            (an undeliverable head is bounced to a local sender's device here).
        notify: ``notify(user_id, device_id)`` after a bounce was enqueued.
        bounce_remote: ``await bounce_remote(envelope)`` durably hands a ``bounce``
            envelope for a sender homed at another node to that node (the outbox);
            ``None``: such bounces are only logged.
        log: for metadata-only log lines.
        send_nowait: ``send_nowait(frames, last_seq) -> bool`` writes encoded frames
            now without yielding if the connection's writer is idle (``False``:
            nothing written), for :meth:`offer`; ``None``: nothing is ever offered.
    """

    def __init__(
        self, storage: Storage, registry: DeviceRegistry, user_id: str, device_id: int,
        send: Callable[[bytes], Awaitable[None]], window: int = DEFAULT_WINDOW, *,
        max_frame: int = 1024 * 1024, queue_ttl: float | None = None,
        clock: Callable[[], float] = time.time,
        is_local: Callable[[str], bool] = lambda user_id: True,
        notify: Callable[[str, int], None] = lambda user_id, device_id: None,
        bounce_remote: Callable[[Envelope], Awaitable[object]] | None = None,
        log: logging.Logger | None = None,
        send_nowait: Callable[[list[bytes], int], bool] | None = None,
    ) -> None:
        self._bounce_remote = bounce_remote
        self._send_nowait = send_nowait
        self._cursor = 0  # the highest seq read (delivered or skipped)
        self._parked: trio.Event | None = None  # the wake-up awaited while caught up
        self._storage = storage
        self._registry = registry
        self._dev = (user_id, device_id)
        self._send = send
        self._window = window
        self._max_frame = max_frame
        self._queue_ttl = queue_ttl
        self._clock = clock
        self._is_local = is_local
        self._notify = notify
        self._log = log or logging.getLogger(__name__)
        self._in_flight: deque[int] = deque()
        self._acked = trio.Event()
        self.delivered = 0
        """The highest seq delivered on this connection (0 before the first)."""
        self.frames = 0  # deliver frames written (tests, metrics)
        self.offered = 0  # envelopes delivered from a commit's hand-back (tests, metrics)

    @property
    def in_flight(self) -> int:
        """How many delivered envelopes await an ack."""
        return len(self._in_flight)

    def on_ack(self, seq: int) -> None:
        """The device acknowledged everything up to ``seq`` (at most :attr:`delivered`)."""
        while self._in_flight and self._in_flight[0] <= seq:
            self._in_flight.popleft()
        self._acked.set()
        self._acked = trio.Event()

    def offer(self, items: list[tuple[int, float, bytes]]) -> bool:
        """Deliver just-committed ``(seq, ts, stored envelope)`` items of this device,
        in seq order, now, from the caller (a commit's hand-back on the event loop),
        if that keeps every rule of :meth:`run`: the pusher is waiting for a wake-up
        after a read that found its queue drained (``synced`` sent), no wake-up is
        pending, the first seq follows its cursor and the rest follow without a gap
        (so nothing older is unsent), none has expired, each fits a frame, the window
        has room, and the connection's writer is idle. Returns ``False`` (nothing
        done: wake the pusher instead) otherwise."""
        wake = self._parked
        if wake is None or wake.is_set() or self._send_nowait is None or not items:
            return False
        if len(self._in_flight) + len(items) > self._window:
            return False
        oldest = -float("inf") if self._queue_ttl is None else self._clock() - self._queue_ttl
        seq = self._cursor
        for s, ts, envelope in items:
            seq += 1
            if s != seq or ts < oldest or not fits_alone(envelope, self._max_frame):
                return False
        frames = pack_deliveries([(s, env) for s, _, env in items], self._max_frame)
        if not self._send_nowait([data for data, _ in frames], seq):
            return False
        for _, seqs in frames:
            self._in_flight.extend(seqs)
        self.frames += len(frames)
        self.delivered = self._cursor = seq
        self.offered += len(items)
        return True

    async def run(self) -> None:
        """Push the backlog, then ``synced`` once, then live envelopes; runs until cancelled."""
        user_id, device_id = self._dev
        synced = False
        # A backend's read without a checkpoint (LMDB), for the first read after a
        # wake-up: the task was just scheduled, so a checkpoint would only cost the
        # delivery one more round of the scheduler. Reading on (more than a batch
        # queued) goes through read_queue and its checkpoint, so a long backlog
        # never holds the loop.
        read_now = getattr(self._storage, "read_queue_now", None)
        woken = False
        while True:
            wake = self._registry.wakeup(user_id, device_id)
            while len(self._in_flight) >= self._window:
                await self._acked.wait()
                woken = True
            room = min(READ_BATCH, self._window - len(self._in_flight))
            if woken and read_now is not None:
                items = read_now(user_id, device_id, after_seq=self._cursor, limit=room)
            else:
                items = await self._storage.read_queue(user_id, device_id,
                                                       after_seq=self._cursor, limit=room)
            woken = False
            oldest = -float("inf") if self._queue_ttl is None else self._clock() - self._queue_ttl
            ready: list[tuple[int, bytes]] = []
            blocked: QueueItem | None = None
            for item in items:
                if item.ts < oldest:
                    self._cursor = item.seq
                    continue  # expired: deleted by the next sweep or an ack covering it
                if not fits_alone(item.envelope, self._max_frame):
                    blocked = item
                    break
                ready.append((item.seq, item.envelope))
                self._cursor = item.seq
            for data, seqs in pack_deliveries(ready, self._max_frame):
                self._in_flight.extend(seqs)
                self.delivered = seqs[-1]
                self.frames += 1
                await self._send(data)
            if blocked is not None:
                await self._drop_head(blocked)
                self._cursor = blocked.seq
                continue
            if len(items) >= room:  # perhaps more: read on (fewer: the queue is drained
                continue            # up to the read; a later enqueue has set ``wake``)
            if not synced:
                await self._send(write_frame(Synced(id=0)))
                synced = True
            self._parked = wake  # caught up: offer() may deliver until the wake-up
            try:
                await wake.wait()
            finally:
                self._parked = None
            woken = True

    async def _drop_head(self, item: QueueItem) -> None:
        """Bounce an envelope that no ``deliver`` frame can carry and remove it, once
        every envelope before it was acknowledged (so the removal, a cumulative ack
        up to its seq, deletes nothing the device has not acknowledged)."""
        while self._in_flight:
            await self._acked.wait()
        user_id, device_id = self._dev
        try:
            env = decode_envelope(item.envelope)
        except ValueError:
            env = None
        bounced = False
        while True:
            try:
                if env is not None:
                    bounced = await self._bounce(env, len(item.envelope))
                await self._storage.ack(user_id, device_id, item.seq)
                break
            except KNOWN_REFUSALS as exc:  # full or failing storage: try again later
                self._log.warning("undeliverable envelope seq %d of %s/%d: %s; retrying",
                                  item.seq, user_id[:8], device_id, type(exc).__name__)
                await trio.sleep(5)
        self._log.warning(
            "envelope seq %d of %s/%d (%d bytes) cannot fit a %d-byte frame: removed%s",
            item.seq, user_id[:8], device_id, len(item.envelope), self._max_frame,
            " and bounced to its sender" if bounced else " (not bounced)")

    async def _bounce(self, env: Envelope, size: int) -> bool:
        """Queue a ``too_large`` bounce for ``env``'s sender (here, or through the
        outbox to its home); ``False`` if there is no way to."""
        body = encode_bounce_body(
            "too_large", f"the message ({size} bytes stored) exceeds the recipient's frame "
                         f"limit of {self._max_frame} bytes and was not delivered", self._dev[0])
        bounce = Envelope(msg_id=env.msg_id, sender_user=env.sender_user,
                          sender_device=env.sender_device, ts=int(self._clock() * 1000),
                          kind="bounce", body=body)  # origin "home" here; a peer marks "peer"
        if not self._is_local(env.sender_user):
            if self._bounce_remote is None:
                return False
            await self._bounce_remote(bounce)
            return True
        seqs = await self._storage.enqueue(
            [(env.sender_user, env.sender_device, encode_envelope(bounce))],
            dedupe=b"undeliverable\0" + env.sender_user.encode() + b"\0" + env.msg_id
            + self._dev[0].encode() + self._dev[1].to_bytes(4, "big"))
        if seqs is not None:
            self._notify(env.sender_user, env.sender_device)
        return True
