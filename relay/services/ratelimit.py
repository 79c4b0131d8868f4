"""Token buckets: the node's rate limits per account, per source address and per peer.

One :class:`TokenBuckets` holds the buckets of one action (``send``, ``claim_keys``,
...) keyed by whatever the caller counts under (a user id, an address key from
:func:`relay.net.admission.address_key`, a peer node id). A bucket holds at most
``burst`` tokens and gains ``rate`` per second; a request of cost ``c`` passes when
the bucket holds ``min(c, burst)`` tokens and then takes ``c`` (a request larger
than the burst passes only from a full bucket and leaves a debt that later
requests wait out). A refusal says how long until the request would pass.

Pure bookkeeping: the caller passes the time (``trio.current_time()``, so tests
can use an autojump clock); no I/O, no Trio, no global state. Memory is bounded:
the buckets are kept in least-recently-taken order, and a new key beyond
``max_keys`` forgets the least recently taken one (one bucket per new key:
amortised O(1), never a scan of the table). That bucket has almost always refilled
completely (then it is indistinguishable from a new one); :attr:`TokenBuckets.forgiven`
counts those that had not (a debt forgotten: the table is too small for the load).

Why not the ``limits`` package: its in-memory storage expires keys with a
background timer thread and counts windows, not tokens with a debt; the dozen
lines here are the whole algorithm and follow Trio's clock.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass

DEFAULT_MAX_KEYS = 100_000


@dataclass(frozen=True, slots=True)
class Limited:
    """A refusal: the request would pass after ``retry_after`` seconds."""

    retry_after: float

    @property
    def retry_after_ms(self) -> int:
        """``retry_after`` in whole milliseconds, at least 1."""
        return max(1, math.ceil(self.retry_after * 1000))


class TokenBuckets:
    """Buckets of ``rate`` tokens per second, ``burst`` at most, one per key.

    Args:
        rate: tokens gained per second (> 0).
        burst: most tokens a bucket holds (> 0); a new key starts full.
        max_keys: most keys kept; a new key beyond forgets the least recently
            taken one.

    Attributes:
        evicted: buckets forgotten to make room (each new key beyond ``max_keys``
            forgets exactly one).
        forgiven: of those, buckets that had not refilled completely.

    Raises:
        ValueError: ``rate`` or ``burst`` not positive.
    """

    def __init__(self, rate: float, burst: float, *, max_keys: int = DEFAULT_MAX_KEYS) -> None:
        if rate <= 0 or burst <= 0:
            raise ValueError("rate and burst must be positive")
        self.rate = float(rate)
        self.burst = float(burst)
        self._max_keys = max_keys
        # key -> (tokens, at), least recently taken first
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()
        self.evicted = 0
        self.forgiven = 0

    def __len__(self) -> int:
        return len(self._buckets)

    def __contains__(self, key: object) -> bool:
        """Whether a bucket is held for ``key`` (else it would start full)."""
        return key in self._buckets

    def level(self, key: str, now: float) -> float:
        """The tokens ``key`` holds at ``now`` (negative: a debt)."""
        tokens, at = self._buckets.get(key, (self.burst, now))
        return min(self.burst, tokens + (now - at) * self.rate)

    def check(self, key: str, cost: float, now: float) -> Limited | None:
        """Whether ``cost`` tokens may be taken now, without taking them:
        ``None`` (yes) or the :class:`Limited` refusal."""
        tokens = self.level(key, now)
        need = min(cost, self.burst)
        if tokens >= need:
            return None
        return Limited((need - tokens) / self.rate)

    def give_back(self, key: str, cost: float, now: float) -> None:
        """Return ``cost`` tokens taken from ``key``'s bucket (never above ``burst``;
        nothing if the bucket is no longer held)."""
        if key in self._buckets:
            self._buckets[key] = (min(self.burst, self.level(key, now) + cost), now)

    def take(self, key: str, cost: float, now: float) -> Limited | None:
        """Take ``cost`` tokens from ``key``'s bucket if it holds ``min(cost, burst)``:
        ``None`` (taken) or the :class:`Limited` refusal (nothing taken)."""
        refused = self.check(key, cost, now)
        if refused is None:
            buckets = self._buckets
            buckets[key] = (self.level(key, now) - cost, now)
            buckets.move_to_end(key)
            if len(buckets) > self._max_keys:
                _, (tokens, at) = buckets.popitem(last=False)
                self.evicted += 1
                if tokens + (now - at) * self.rate < self.burst:
                    self.forgiven += 1
        return refused
