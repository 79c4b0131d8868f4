"""Sans-I/O bookkeeping of one connection after it is open, for either end that sends
requests (a device, a linking device, a node on its outgoing peer link).

* **Request ids.** :meth:`Session.open_request` gives each request the next id
  (1, 2, 3, ...; ids are never reused on one connection, so a late answer cannot be
  taken for another request's).
* **Pipelining window.** At most ``window`` requests are outstanding at once;
  answers are matched by id and may come in any order (peer links), or in order
  (a device's connection). Keepalive pings do not count.
* **Streams.** A request that opens a stream (``sync``) gets no single answer; an
  ``error`` with its id ends the stream and is passed on like a push.
* **Keepalive.** :class:`~relay.protocol.keepalive.Keepalive` decides when to
  ping and when the other end is overdue; the pings are requests of this session.
* **Classification** of each received frame (:meth:`Session.receive`) into
  :class:`Incoming` kinds: the answer to a request, a push, the other end's ping, the
  answer to our ping, or a late answer to a request we gave up.

No I/O, no Trio, no clock: callers pass ``now`` (seconds, monotonic).
"""

from __future__ import annotations

import dataclasses
import enum
import itertools

from .errors import LocalProtocolError
from .frames import Deliver, Error, Frame, KeyCount, LinkData, Ok, Ping, Synced
from .keepalive import DEFAULT_KEEPALIVE, Keepalive, KeepaliveAction, KeepaliveConfig

__all__ = ["DEFAULT_WINDOW", "Incoming", "Session"]

DEFAULT_WINDOW = 256
"""Requests one connection keeps outstanding at most (a bound on memory and on the
node's work per connection)."""

_PUSH_TYPES = (Deliver, Synced, LinkData)  # pushes whatever their id


class Incoming(enum.Enum):
    """What a received frame is (:meth:`Session.receive`)."""

    ANSWER = "answer"  # answers an outstanding request (its id)
    PUSH = "push"  # deliver, synced, link_data, key_count/error with id 0, error ending a stream
    PING = "ping"  # the other end's ping: answer ``ok`` with its id (:meth:`Session.pong`)
    KEEPALIVE = "keepalive"  # the answer to our own ping
    LATE = "late"  # an id we do not wait for (a request given up): drop it


class Session:
    """Request ids, window, streams, keepalive and classification of one connection.

    Args:
        window: most outstanding requests (default :data:`DEFAULT_WINDOW`).
        keepalive: when to ping and give up (default: every 20 s, 10 s to answer).
        now: the current time in seconds (start of the keepalive's silence).

    Attributes:
        keepalive: the :class:`Keepalive` state.
    """

    def __init__(self, *, window: int = DEFAULT_WINDOW,
                 keepalive: KeepaliveConfig = DEFAULT_KEEPALIVE, now: float = 0.0) -> None:
        if window < 1:
            raise ValueError("the window must allow at least one request")
        self.window = window
        self.keepalive = Keepalive(keepalive, now)
        self._ids = itertools.count(1)
        self._pending: set[int] = set()
        self._pings: set[int] = set()
        self._streams: set[int] = set()
        self.closed = False

    # ------------------------------------------------------------- sending

    @property
    def in_flight(self) -> int:
        """Requests sent and not yet answered or given up (pings excluded)."""
        return len(self._pending)

    @property
    def window_open(self) -> bool:
        """Whether :meth:`open_request` may be called now."""
        return len(self._pending) < self.window

    def _check_open(self) -> None:
        if self.closed:
            raise LocalProtocolError("the session is closed")

    def open_request(self, frame: Frame) -> Frame:
        """Register a request that expects one answer.

        Returns:
            ``frame`` with its new request id; send it.

        Raises:
            LocalProtocolError: the window is full (wait for an answer first) or the
                session is closed.
        """
        self._check_open()
        if not self.window_open:
            raise LocalProtocolError(f"the request window ({self.window}) is full")
        rid = next(self._ids)
        self._pending.add(rid)
        return _with_id(frame, rid)

    def open_stream(self, frame: Frame) -> Frame:
        """Register a request that starts a stream (``sync``): no answer is awaited; an
        ``error`` with its id is a push. Not counted in the window.

        Returns:
            ``frame`` with its new request id.
        """
        self._check_open()
        rid = next(self._ids)
        self._streams.add(rid)
        return _with_id(frame, rid)

    def give_up(self, request_id: int) -> None:
        """The caller stopped waiting for ``request_id`` (deadline, cancellation): it
        leaves the window, and its answer, if it comes, is ``LATE``."""
        self._pending.discard(request_id)

    def is_pending(self, request_id: int) -> bool:
        """Whether an answer to ``request_id`` is awaited."""
        return request_id in self._pending

    # ------------------------------------------------------------- keepalive

    def poll_keepalive(self, now: float) -> KeepaliveAction:
        """Run the keepalive at ``now``: ``PING`` (send :meth:`ping` now), ``DEAD`` (the
        other end is overdue: close the connection) or ``NOTHING``."""
        if self.closed:
            return KeepaliveAction.NOTHING
        return self.keepalive.poll(now)

    def ping(self) -> Ping:
        """A keepalive ``ping`` with a fresh id; its ``ok`` is classified ``KEEPALIVE``.
        Not counted in the window."""
        rid = next(self._ids)
        self._pings.add(rid)
        return Ping(id=rid)

    def next_keepalive(self, now: float) -> float:
        """When to call :meth:`poll_keepalive` next (see :meth:`Keepalive.next_poll`)."""
        return self.keepalive.next_poll(now)

    # ------------------------------------------------------------- receiving

    def receive(self, frame: Frame, now: float) -> Incoming:
        """Classify a received frame (any frame is a sign of life for the keepalive).

        Returns:
            The :class:`Incoming` kind; ``ANSWER`` removes the request from the window.
        """
        self.keepalive.received(now)
        rid = frame.id
        if isinstance(frame, Ping):  # a request of the other end, never an answer
            return Incoming.PING if rid else Incoming.LATE
        if rid:
            if rid in self._pending:
                self._pending.discard(rid)
                return Incoming.ANSWER
            if rid in self._pings:
                self._pings.discard(rid)
                return Incoming.KEEPALIVE
            if rid in self._streams:
                if isinstance(frame, Error):
                    self._streams.discard(rid)
                return Incoming.PUSH
        if rid == 0 and isinstance(frame, Error | KeyCount):
            return Incoming.PUSH
        if isinstance(frame, _PUSH_TYPES):
            return Incoming.PUSH
        return Incoming.LATE

    @staticmethod
    def pong(ping: Frame) -> Ok:
        """The answer to the other end's ``ping``."""
        return Ok(id=ping.id)

    def close(self) -> set[int]:
        """End the session; returns the ids of the requests that will get no answer."""
        self.closed = True
        pending, self._pending = self._pending, set()
        self._pings.clear()
        self._streams.clear()
        return pending


def _with_id(frame: Frame, rid: int) -> Frame:
    return dataclasses.replace(frame, id=rid)
