"""Per-device delivery: the envelope codec, the connected-device registry and the pusher.

* Envelopes are stored in device queues as msgpack maps of
  :class:`relay.protocol.frames.Envelope` (opaque to storage).
* :class:`DeviceRegistry` is owned by one node (no globals): it knows which
  devices are connected (to push ``key_count``) and wakes their pushers when
  new envelopes were enqueued.
* :class:`Pusher` streams one device's queue to its connection: the backlog,
  one ``synced``, then live envelopes, with at most ``window`` unacknowledged
  ``deliver`` frames in flight. Envelopes enqueued more than ``queue_ttl``
  seconds ago are skipped, not delivered (the next expiry sweep, or the
  device's next ack covering their seq, deletes them).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Protocol

import msgpack
import trio

from relay.protocol.frames import Deliver, Envelope, Frame, Synced
from storage import Storage

DEFAULT_WINDOW = 256
READ_BATCH = 16  # envelopes read per storage call (each up to max_frame bytes)

_Dev = tuple[str, int]


def pack_envelope(env: Envelope) -> bytes:
    """The stored form of an envelope (a msgpack map of its fields)."""
    return msgpack.packb(
        {"msg_id": env.msg_id, "sender_user": env.sender_user, "sender_device": env.sender_device,
         "ts": env.ts, "kind": env.kind, "body": env.body},
        use_bin_type=True,
    )


def unpack_envelope(data: bytes) -> Envelope:
    """Inverse of :func:`pack_envelope` (for data this node stored itself).

    Raises:
        ValueError: ``data`` is not a stored envelope (corrupt storage).
    """
    try:
        m = msgpack.unpackb(data, raw=False)
        return Envelope(m["msg_id"], m["sender_user"], m["sender_device"], m["ts"], m["kind"],
                        m["body"])
    except (msgpack.UnpackException, KeyError, TypeError) as exc:
        raise ValueError("corrupt stored envelope") from exc


class Session(Protocol):
    """What the registry needs from a connected device's connection."""

    def push_nowait(self, frame: Frame) -> bool:
        """Queue a push frame without blocking; ``False`` if the connection is saturated."""

    def kick(self) -> None:
        """Close the connection soon (the device connected again elsewhere)."""

    def revoke(self) -> None:
        """The device was removed from its account's list: tell it and close soon."""


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


class Pusher:
    """Streams one device's queue to its connection.

    Args:
        storage: where the queue lives.
        registry: wake-ups for new envelopes (the device must be registered).
        user_id, device_id: the device.
        send: coroutine sending one frame on the connection (may block: backpressure).
        window: most ``deliver`` frames not yet acknowledged.
        queue_ttl: seconds; envelopes enqueued longer ago than that (by their
            stored ``ts``) are skipped, never delivered. ``None``: no limit.
        clock: wall-clock seconds since the epoch (tests inject their own).
    """

    def __init__(
        self, storage: Storage, registry: DeviceRegistry, user_id: str, device_id: int,
        send: Callable[[Frame], Awaitable[None]], window: int = DEFAULT_WINDOW, *,
        queue_ttl: float | None = None, clock: Callable[[], float] = time.time,
    ) -> None:
        self._storage = storage
        self._registry = registry
        self._dev = (user_id, device_id)
        self._send = send
        self._window = window
        self._queue_ttl = queue_ttl
        self._clock = clock
        self._in_flight: deque[int] = deque()
        self._acked = trio.Event()

    @property
    def in_flight(self) -> int:
        """How many delivered envelopes await an ack."""
        return len(self._in_flight)

    def on_ack(self, seq: int) -> None:
        """The device acknowledged everything up to ``seq`` (already deleted from storage)."""
        while self._in_flight and self._in_flight[0] <= seq:
            self._in_flight.popleft()
        self._acked.set()
        self._acked = trio.Event()

    async def run(self) -> None:
        """Push the backlog, then ``synced`` once, then live envelopes; runs until cancelled."""
        user_id, device_id = self._dev
        cursor = 0
        synced = False
        while True:
            wake = self._registry.wakeup(user_id, device_id)
            while len(self._in_flight) >= self._window:
                await self._acked.wait()
            room = min(READ_BATCH, self._window - len(self._in_flight))
            items = await self._storage.read_queue(user_id, device_id, after_seq=cursor, limit=room)
            oldest = -float("inf") if self._queue_ttl is None else self._clock() - self._queue_ttl
            for item in items:
                cursor = item.seq
                if item.ts < oldest:
                    continue  # expired: deleted by the next sweep or an ack covering it
                await self._send(Deliver(id=0, seq=item.seq, envelope=unpack_envelope(item.envelope)))
                self._in_flight.append(item.seq)
            if items:
                continue
            if not synced:
                await self._send(Synced(id=0))
                synced = True
            await wake.wait()
