"""Ceiling: raw LMDB durable puts/s (``sync=True, metasync=True``, as the node
opens it) with ``batch`` puts per write transaction: one put per commit is what
one fsync'd write per request costs; bigger batches are what group commit buys.
Plain ``py-lmdb`` in one thread, no Trio, no storage layer.
"""

from __future__ import annotations

import os
import tempfile
import time

import lmdb

BATCHES = (1, 16, 128, 1024)


def _rate(env: lmdb.Environment, batch: int, size: int, seconds: float, first_key: int) -> float:
    """Commit ``batch``-put transactions for about ``seconds``; return puts/s."""
    value = os.urandom(size)
    key = first_key
    done = 0
    start = time.perf_counter()
    deadline = start + seconds
    while done == 0 or time.perf_counter() < deadline:
        with env.begin(write=True) as txn:
            for _ in range(batch):
                txn.put(key.to_bytes(8, "big"), value)
                key += 1
        done += batch
    return done / (time.perf_counter() - start)


def run_figures(
    size: int = 400, seconds: float = 1.5, batches: tuple[int, ...] = BATCHES
) -> dict[int, float]:
    """``{batch size: durable puts/s}`` for ``size``-byte values, ~``seconds`` per batch size.

    Blocking (fsyncs): call it from a worker thread in async code.
    """
    out: dict[int, float] = {}
    with tempfile.TemporaryDirectory(prefix="wa-bench-lmdb-") as tmp:
        env = lmdb.open(tmp, map_size=4 << 30, sync=True, metasync=True)
        try:
            # Warm the file up so the first figure does not pay for growing it.
            _rate(env, 256, size, 0.1, 1 << 60)
            for i, batch in enumerate(batches):
                out[batch] = _rate(env, batch, size, seconds, i << 40)
        finally:
            env.close()
    return out


if __name__ == "__main__":
    for b, rate in run_figures().items():
        print(f"{b:>5} per commit: {rate:12,.0f} puts/s")
