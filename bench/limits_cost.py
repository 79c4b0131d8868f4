"""Issue 11: what the abuse checks cost per message, in the relay's own process.

The relay scenario's node runs every check on every message (its limits are set high
enough not to trip). This module measures the same work in isolation, so that its
share of ``relay.online.server_us_per_msg`` can be stated:

* the **checks** of 1:1 sends at their home, in runs of 64 as a pipelining device
  sends them: the ``send`` and ``send_bytes`` token buckets of the account and the
  address (taken once per run, as :class:`relay.services.router.Router` does), the
  fan-out check, the correspondent lookup and the quota of each stored part
  (:class:`relay.services.limits.QueuePolicy` over a real LMDB store);
* the **accounting** in storage: ``enqueue_many`` of batches of 64 one-copy requests
  of 250-byte envelopes into a real LMDB store (fsync on), each batch followed by the
  16 receivers' cumulative acks, with charges and a quota against the same without:
  the CPU time difference per message.

CPU time is ``time.process_time()`` (every thread of this process: the group-commit
writer's too). The checks run :data:`ROUNDS` times and the fastest counts; the
accounting is the median over :data:`ROUNDS` rounds of each round's charged minus
plain run (the two run back to back in one round, so that a burst of load from
other processes on a shared machine mostly hits both or neither). A steadier
view on a loaded machine, ``accounting_batch_min_us``: every batch (64 enqueues
and the acks that empty the queues again, so each batch starts from the same
state) is timed alone, and the fastest charged batch minus the fastest plain
batch counts (load only ever adds time).
"""

from __future__ import annotations

import os
import statistics
import time
from pathlib import Path

import trio

from relay.config.abuse import AbuseLimits
from relay.services.limits import QueuePolicy, RateLimits
from storage import EnqueueRequest
from storage.lmdb import LmdbStorage

BATCH = 64
ENVELOPE = 250  # bytes: a 100-byte body in its stored envelope
ROUNDS = 5
GENEROUS = AbuseLimits(send_rate=1e12, send_burst=1e12, send_bytes_rate=1e15,
                       send_bytes_burst=1e15)


def _users(n: int) -> list[str]:
    return [f"{i:052d}" for i in range(n)]


async def _checks_us(policy: QueuePolicy, rates: RateLimits, n: int) -> float:
    """CPU µs per message of the sender-side and recipient-side checks."""
    senders, receivers = _users(16), _users(32)[16:]
    start = time.process_time()
    for run in range(0, n, BATCH):
        s = senders[(run // BATCH) % 16]
        size = min(BATCH, n - run)
        rates.take_many([("send", size), ("send_bytes", size * ENVELOPE)], account=s,
                        address="127.0.0.1")
        for i in range(run, run + size):
            policy.check_fanout(ENVELOPE)
            await policy.quota_for(s, [receivers[i % 16]], None)
    return (time.process_time() - start) / n * 1e6


async def _enqueue_us(store: LmdbStorage, policy: QueuePolicy | None,
                      n: int) -> tuple[float, float]:
    """CPU µs per message of ``enqueue_many`` and of the receivers' cumulative acks
    after each batch (as online receivers ack), with charges and quotas when
    ``policy`` is given: over the whole run, and of the fastest full batch."""
    senders, receivers = _users(16), _users(32)[16:]
    elapsed = 0.0
    fastest = float("inf")
    for start in range(0, n, BATCH):
        requests = []
        for i in range(start, min(n, start + BATCH)):
            s, r = senders[i % 16], receivers[i % 16]
            charges, quota = (), None
            if policy is not None:
                charges, quota = await policy.quota_for(s, [r], None)
            requests.append(EnqueueRequest([(r, 0, os.urandom(ENVELOPE))],
                                           dedupe=os.urandom(16), charges=charges, quota=quota))
        t0 = time.process_time()
        answers = await store.enqueue_many(requests)
        await store.ack_many([(r, 0, 2**62) for r in receivers])
        took = time.process_time() - t0
        elapsed += took
        if len(requests) == BATCH:
            fastest = min(fastest, took)
        assert all(isinstance(a, list) for a in answers), answers
    return elapsed / n * 1e6, fastest / BATCH * 1e6


async def measure(root: Path, n: int = 4000) -> dict[str, float]:
    """The checks' CPU µs per message (fastest of :data:`ROUNDS`) and the
    accounting's (median of the rounds' charged minus plain, at least 0).

    Returns:
        ``{"checks_us", "accounting_us", "plain_enqueue_us", "accounting_batch_min_us"}``
        (``plain_enqueue_us``: median of the plain runs; the last: fastest charged
        batch minus fastest plain batch, at least 0).
    """
    (root / "lmdb").mkdir(parents=True, exist_ok=True)
    async with LmdbStorage.open(root / "lmdb") as store:
        policy = QueuePolicy(GENEROUS, store)
        rates = RateLimits(GENEROUS)
        checks = min([await _checks_us(policy, rates, n) for _ in range(ROUNDS)])
        plain, charged = [], []
        for _ in range(ROUNDS):
            plain.append(await _enqueue_us(store, None, n))
            charged.append(await _enqueue_us(store, policy, n))
    diffs = [c[0] - p[0] for p, c in zip(plain, charged, strict=True)]
    batch_min = min(c[1] for c in charged) - min(p[1] for p in plain)
    return {"checks_us": checks, "accounting_us": max(0.0, statistics.median(diffs)),
            "plain_enqueue_us": statistics.median(p[0] for p in plain),
            "accounting_batch_min_us": max(0.0, batch_min)}


def run_blocking(root: Path, n: int) -> dict[str, float]:
    """:func:`measure` in its own Trio run (for a worker thread)."""
    return trio.run(measure, root, n)
