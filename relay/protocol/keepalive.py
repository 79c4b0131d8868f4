"""Keepalive bookkeeping of one connection, sans-I/O (docs/protocol.md, "Keepalive").

A connection that goes dark without a reset (a NAT timeout, a dead Wi-Fi, a
black-holed route) never ends by itself: TCP only notices when it has something
to send, and then only after minutes. So each end watches what it *receives*:

* after ``interval`` seconds with nothing received, send a ``ping`` (answered ``ok``);
* if still nothing has arrived ``timeout`` seconds after that ping, the other end
  is overdue: close the connection (its pending requests fail).

Any received frame counts as a sign of life, not only the ``ok``: a busy link needs
no ping. While the *reader* is held up by us (our own bounded push queue is full)
the bookkeeping pauses (:meth:`Keepalive.stall`), because then silence is our fault.

Times are plain floats in seconds from any monotonic clock (``trio.current_time()``).
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass

__all__ = ["DEFAULT_KEEPALIVE", "Keepalive", "KeepaliveAction", "KeepaliveConfig"]


@dataclass(frozen=True, slots=True)
class KeepaliveConfig:
    """When to ping and when to give up.

    Attributes:
        interval: seconds without any received frame before a ``ping`` is sent
            (default 20); ``0`` disables the keepalive.
        timeout: seconds after that ping within which something must arrive
            (default 10), else the connection is dead.

    Raises:
        ValueError: a negative interval or a timeout that is not positive.
    """

    interval: float = 20.0
    timeout: float = 10.0

    def __post_init__(self) -> None:
        if not (self.interval >= 0 and math.isfinite(self.interval)):
            raise ValueError(f"keepalive interval must be >= 0 seconds, not {self.interval}")
        if not (self.timeout > 0 and math.isfinite(self.timeout)):
            raise ValueError(f"keepalive timeout must be > 0 seconds, not {self.timeout}")

    @property
    def enabled(self) -> bool:
        """False when ``interval`` is 0."""
        return self.interval > 0

    @property
    def deadline(self) -> float:
        """Seconds of silence after which a connection is surely declared dead:
        ``interval + timeout``."""
        return self.interval + self.timeout


DEFAULT_KEEPALIVE = KeepaliveConfig()


class KeepaliveAction(enum.Enum):
    """What :meth:`Keepalive.poll` asks the I/O layer to do now."""

    NOTHING = "nothing"
    PING = "ping"  # send a ping now
    DEAD = "dead"  # the other end is overdue: close the connection


class Keepalive:
    """Keepalive state of one connection.

    Args:
        config: the :class:`KeepaliveConfig`.
        now: the current time (seconds); counts as the last sign of life.

    Attributes:
        ping_sent_at: when the outstanding ping was asked for, or ``None``.
    """

    def __init__(self, config: KeepaliveConfig, now: float) -> None:
        self.config = config
        self._last_received = now
        self.ping_sent_at: float | None = None
        self._stalled = False

    def received(self, now: float) -> None:
        """Something arrived at ``now``: the other end is alive."""
        self._last_received = now
        self.ping_sent_at = None

    def stall(self) -> None:
        """Our reader is blocked by our own consumer: pause the judgement."""
        self._stalled = True

    def resume(self, now: float) -> None:
        """Our reader reads again; the silence counts from ``now``."""
        self._stalled = False
        self.received(now)

    def poll(self, now: float) -> KeepaliveAction:
        """What to do at ``now``. Returning ``PING`` records the ping as sent (the
        ``timeout`` runs from ``now`` even if the ping cannot leave at once)."""
        if not self.config.enabled or self._stalled:
            return KeepaliveAction.NOTHING
        if self.ping_sent_at is not None:
            if now >= self.ping_sent_at + self.config.timeout:
                return KeepaliveAction.DEAD
            return KeepaliveAction.NOTHING
        if now >= self._last_received + self.config.interval:
            self.ping_sent_at = now
            return KeepaliveAction.PING
        return KeepaliveAction.NOTHING

    def next_poll(self, now: float) -> float:
        """The time at which to call :meth:`poll` next: when it may answer something
        else than ``NOTHING`` (``inf`` when disabled; ``now + timeout`` while stalled,
        to look again). :meth:`received` only ever moves it later, so an I/O layer
        may sleep until it and poll again."""
        if not self.config.enabled:
            return math.inf
        if self._stalled:
            return now + self.config.timeout
        if self.ping_sent_at is not None:
            return self.ping_sent_at + self.config.timeout
        return self._last_received + self.config.interval
