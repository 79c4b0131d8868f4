"""The one reconnect/retry backoff policy of the project (issue 12: no hand-written copies).

Capped exponential backoff with multiplicative jitter: the n-th delay is
``min(first * 2**n, cap) * U(low, high)``. Jitter spreads many clients (or
many nodes' outboxes) that lost the same node so they do not all come back at
the same instant ("thundering herd"; AWS Architecture Blog, *Exponential
Backoff and Jitter*, 2015). Used by peer links and the outbox
(:mod:`relay.services.federation`, :mod:`relay.services.outbox`), ``wa-cli recv
--follow`` and resumable media transfers. Pure: no Trio, no clock.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass


@dataclass(frozen=True)
class Backoff:
    """A backoff policy; :meth:`delays` yields the waits of one outage.

    Attributes:
        first: seconds before the first retry (> 0).
        cap: the longest wait in seconds (>= ``first``).
        low, high: each delay is scaled by a uniform factor in ``[low, high]``
            (``1.0, 1.0``: no jitter).
    """

    first: float
    cap: float
    low: float = 1.0
    high: float = 1.0

    def __post_init__(self) -> None:
        if not 0 < self.first <= self.cap or not 0 < self.low <= self.high:
            raise ValueError(f"bad backoff policy {self!r}")

    def delays(self, rng: Callable[[], float] | None = None) -> Iterator[float]:
        """Yield endless delays in seconds: ``first`` doubling up to ``cap``, jittered.

        Args:
            rng: a source of uniform floats in [0, 1) (default :func:`random.random`);
                tests pass a constant.
        """
        draw = rng or random.random
        delay = self.first
        while True:
            yield delay * (self.low + (self.high - self.low) * draw())
            delay = min(delay * 2, self.cap)


#: Peer links and outbox retries: 0.2 s doubling to 30 s, +-25 %.
PEER_BACKOFF = Backoff(first=0.2, cap=30.0, low=0.75, high=1.25)
#: ``wa-cli recv --follow`` reconnecting after an outage: 0.5 s doubling to 30 s, 50-100 %.
CLIENT_RECONNECT = Backoff(first=0.5, cap=30.0, low=0.5, high=1.0)
#: A resumable media transfer retrying a step: 0.2 s doubling to 5 s, no jitter.
TRANSFER_RETRY = Backoff(first=0.2, cap=5.0)
