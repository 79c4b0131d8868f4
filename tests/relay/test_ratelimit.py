"""Token buckets (relay/services/ratelimit.py): refusal and retry-after, and a
bounded table whose eviction does one bucket of work per new key."""

import pytest

from relay.services.ratelimit import TokenBuckets


def test_refusal_says_when_the_request_would_pass() -> None:
    b = TokenBuckets(rate=2.0, burst=4.0)
    assert b.take("a", 4, 0.0) is None
    refused = b.take("a", 1, 0.0)
    assert refused is not None and refused.retry_after == pytest.approx(0.5)
    assert refused.retry_after_ms == 500
    assert b.take("a", 1, 0.5) is None  # exactly refilled by then
    assert b.take("b", 1, 0.0) is None  # other keys are their own


def test_a_request_above_the_burst_leaves_a_debt() -> None:
    b = TokenBuckets(rate=1.0, burst=10.0)
    assert b.take("a", 25, 0.0) is None  # from a full bucket: passes, owes 15
    assert b.level("a", 0.0) == -15
    refused = b.take("a", 1, 0.0)
    assert refused is not None and refused.retry_after == pytest.approx(16.0)


def test_two_hundred_thousand_new_keys_cost_one_eviction_each() -> None:
    bound = 100_000
    b = TokenBuckets(rate=1.0, burst=5.0, max_keys=bound)
    b.take("active", 5, 0.0)  # emptied, and kept busy below
    for i in range(200_000):
        now = i * 1e-4  # 20 s in all: the early keys have refilled when evicted
        assert b.take(f"k{i}", 1, now) is None
        if i % 1000 == 0:
            b.take("active", 0.001, now)
        assert len(b) <= bound
    assert len(b) == bound
    # the work of eviction: exactly one bucket per key beyond the bound, no scans
    assert b.evicted == 200_000 + 1 - bound
    # the least recently taken go first: the busy key is still held, the first new
    # keys are not
    assert "active" in b and "k0" not in b and "k199999" in b
    assert b.forgiven == 0  # every evicted bucket had refilled


def test_eviction_under_a_too_small_table_counts_forgiven_debts() -> None:
    b = TokenBuckets(rate=1.0, burst=5.0, max_keys=2)
    for key in ("a", "b", "c"):
        b.take(key, 5, 0.0)
    assert len(b) == 2 and b.evicted == 1 and b.forgiven == 1
    assert b.level("a", 0.0) == 5.0  # forgotten: starts full again
