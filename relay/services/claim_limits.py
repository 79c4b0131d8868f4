"""Throttling of one-time key claims (issue 10, finding 6): small token buckets.

Without a limit anyone can take every one-time key of a device in
milliseconds, so that later sessions with it start from the fallback key only.
Two budgets, each a token bucket (capacity, refill rate per second):

* **per claiming account**, charged at the node the claimer is connected to,
  one token per device claimed (:meth:`ClaimLimits.charge_claimer`): over it,
  the claim is refused with ``rate_limited`` (the message says when to retry);
* **per target device**, at the device's home, one token per one-time key
  handed out (:meth:`ClaimLimits.one_time_allowed`): over it, the claim gets
  the device's *fallback* key instead (known to this node from the device's
  upload or an earlier claim, :meth:`ClaimLimits.remember_fallback`), or no
  key for that device if this node has not seen it since it started. A
  session still starts; the drained keys just stop being one-time keys.

Buckets live in memory (a restart refills them) in a bounded LRU of
:data:`MAX_TRACKED` keys per kind. Self-contained on purpose so that the
node's general rate limiter (issue 11) can absorb it later.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass

from relay.errors import RelayError
from relay.protocol import ErrorCode

__all__ = ["ACCOUNT_BUDGET", "DEVICE_BUDGET", "MAX_TRACKED", "Budget", "ClaimLimits",
           "KeyedBuckets"]

MAX_TRACKED = 100_000
"""Buckets (and cached fallback keys) kept per kind; the least recently used go first."""


@dataclass(frozen=True, slots=True)
class Budget:
    """A token bucket's shape: up to ``capacity`` tokens, ``rate`` tokens added per second."""

    capacity: float
    rate: float


ACCOUNT_BUDGET = Budget(capacity=1000, rate=10)
"""Devices one account may claim keys for: a burst of 1,000 (a large group's first
message), then 10 a second."""
DEVICE_BUDGET = Budget(capacity=30, rate=1 / 20)
"""One-time keys one device hands out: a burst of 30, then one every 20 seconds."""


class KeyedBuckets:
    """One token bucket per key, all of the same :class:`Budget`; bounded LRU.

    Args:
        budget: the shape of every bucket.
        clock: seconds, monotonic (default ``time.monotonic``).
        max_keys: buckets kept; a forgotten key starts full again.
    """

    def __init__(self, budget: Budget, *, clock: Callable[[], float] = time.monotonic,
                 max_keys: int = MAX_TRACKED) -> None:
        self.budget = budget
        self._clock = clock
        self._max = max_keys
        self._buckets: OrderedDict[Hashable, tuple[float, float]] = OrderedDict()

    def take(self, key: Hashable, n: float = 1) -> float:
        """Take ``n`` tokens from ``key``'s bucket if it holds them.

        Returns:
            ``0.0`` if taken; otherwise the seconds until ``n`` tokens will be there
            (nothing is taken then).
        """
        now = self._clock()
        tokens, stamp = self._buckets.pop(key, (self.budget.capacity, now))
        tokens = min(self.budget.capacity, tokens + (now - stamp) * self.budget.rate)
        wait = 0.0
        if tokens >= n:
            tokens -= n
        else:
            wait = (n - tokens) / self.budget.rate if self.budget.rate > 0 else float("inf")
        self._buckets[key] = (tokens, now)
        while len(self._buckets) > self._max:
            self._buckets.popitem(last=False)
        return wait


class ClaimLimits:
    """The two claim budgets of a node and its cache of devices' fallback keys.

    Args:
        account: budget per claiming account (devices claimed).
        device: budget per target device (one-time keys handed out).
        clock: seconds, monotonic.
    """

    def __init__(self, *, account: Budget = ACCOUNT_BUDGET, device: Budget = DEVICE_BUDGET,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.accounts = KeyedBuckets(account, clock=clock)
        self.devices = KeyedBuckets(device, clock=clock)
        self._fallbacks: OrderedDict[tuple[str, int], tuple[str, bytes]] = OrderedDict()

    @classmethod
    def sized(cls, otk_claim_burst: int, key_claims_per_account: int) -> ClaimLimits:
        """Budgets from the node settings of the same names (:class:`relay.config.NodeConfig`):
        a device's burst refills in 10 minutes, an account's in 100 seconds."""
        return cls(account=Budget(key_claims_per_account, key_claims_per_account / 100),
                   device=Budget(otk_claim_burst, otk_claim_burst / 600))

    def charge_claimer(self, user_id: str, devices: int) -> None:
        """Charge ``devices`` claims to the claiming account ``user_id``.

        Raises:
            RelayError: ``rate_limited`` (nothing charged), saying when to retry.
        """
        wait = self.accounts.take(user_id, devices)
        if wait:
            raise RelayError(ErrorCode.RATE_LIMITED,
                             f"too many key claims from this account; retry after "
                             f"{max(1, round(wait))} s")

    def one_time_allowed(self, user_id: str, device_id: int) -> bool:
        """Whether the device may hand out one more one-time key now (takes a token)."""
        return self.devices.take((user_id, device_id)) == 0.0

    def remember_fallback(self, user_id: str, device_id: int, key_id: str, stored: bytes) -> None:
        """Note the device's current fallback key (as stored: key, then its signature)."""
        self._fallbacks[(user_id, device_id)] = (key_id, stored)
        self._fallbacks.move_to_end((user_id, device_id))
        while len(self._fallbacks) > MAX_TRACKED:
            self._fallbacks.popitem(last=False)

    def fallback(self, user_id: str, device_id: int) -> tuple[str, bytes] | None:
        """The device's fallback key as last seen here, or ``None``."""
        return self._fallbacks.get((user_id, device_id))
