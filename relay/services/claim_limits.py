"""The per-device budget of one-time keys (issue 10, finding 6), and the cache of
devices' fallback keys.

Without a limit anyone can take every one-time key of a device in milliseconds,
so that later sessions with it start from the fallback key only. Two limits
apply to a claim, with distinct roles:

* **who claims**: the ``claim_keys`` token bucket of the claiming account and of
  its source address (:class:`relay.services.limits.RateLimits`, settings
  ``claim_keys_rate`` / ``claim_keys_burst``), one token per device asked for,
  charged at the node the claimer is connected to; over it the claim is refused
  with ``rate_limited`` and a retry-after. This is the only limit on claimers.
* **whose keys** (this module): per target device, at the device's home, one
  token per one-time key handed out (:meth:`ClaimLimits.one_time_allowed`,
  setting ``otk_claim_burst``); over it, the claim gets the device's *fallback*
  key instead (:meth:`ClaimLimits.fallback`, else read from storage), so a
  session still starts and the device's one-time keys drain only slowly, whoever
  asks. Nothing is refused here.

Buckets live in memory (a restart refills them) in a bounded table of
:data:`MAX_TRACKED` devices (:class:`relay.services.ratelimit.TokenBuckets`);
the fallback cache is a bounded LRU of as many.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable

from relay.services.ratelimit import TokenBuckets

__all__ = ["DEVICE_BURST", "MAX_TRACKED", "REFILL_SECONDS", "ClaimLimits"]

MAX_TRACKED = 100_000
"""Device buckets (and cached fallback keys) kept; the least recently used go first."""
DEVICE_BURST = 30
"""One-time keys one device hands out in a burst (``otk_claim_burst``)."""
REFILL_SECONDS = 600.0
"""Seconds in which a device's emptied burst refills."""


class ClaimLimits:
    """The per-device one-time-key budget of a node and its cache of fallback keys.

    Args:
        burst: one-time keys one device hands out in a burst; then one per
            ``REFILL_SECONDS / burst`` seconds.
        clock: seconds, monotonic.
    """

    def __init__(self, burst: int = DEVICE_BURST, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.devices = TokenBuckets(burst / REFILL_SECONDS, burst, max_keys=MAX_TRACKED)
        self._clock = clock
        self._fallbacks: OrderedDict[tuple[str, int], tuple[str, bytes]] = OrderedDict()

    def one_time_allowed(self, user_id: str, device_id: int) -> bool:
        """Whether the device may hand out one more one-time key now (takes a token)."""
        return self.devices.take((user_id, device_id), 1, self._clock()) is None  # type: ignore[arg-type]

    def remember_fallback(self, user_id: str, device_id: int, key_id: str, stored: bytes) -> None:
        """Note the device's current fallback key (as stored: key, then its signature)."""
        self._fallbacks[(user_id, device_id)] = (key_id, stored)
        self._fallbacks.move_to_end((user_id, device_id))
        while len(self._fallbacks) > MAX_TRACKED:
            self._fallbacks.popitem(last=False)

    def fallback(self, user_id: str, device_id: int) -> tuple[str, bytes] | None:
        """The device's fallback key as last seen here, or ``None``."""
        return self._fallbacks.get((user_id, device_id))
