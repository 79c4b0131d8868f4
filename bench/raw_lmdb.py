"""Ceiling: raw LMDB durable puts/s (``sync=True``), one put per transaction
versus batched puts per transaction (what group commit buys)."""

from __future__ import annotations

import os
import tempfile
import time

import lmdb

from .stats import line


def _rate(env: lmdb.Environment, total: int, batch: int, size: int) -> float:
    value = os.urandom(size)
    key = 0
    start = time.perf_counter()
    while key < total:
        with env.begin(write=True) as txn:
            for _ in range(batch):
                txn.put(key.to_bytes(8, "big"), value)
                key += 1
    return total / (time.perf_counter() - start)


def run(size: int = 400) -> dict[int, float]:
    """Return {batch size: durable puts/s} for ``size``-byte values."""
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        env = lmdb.open(tmp, map_size=1 << 30, sync=True, metasync=True)
        try:
            for batch, total in ((1, 500), (16, 4_000), (128, 20_000)):
                out[batch] = _rate(env, total, batch, size)
                line(f"raw LMDB durable puts, {batch:>3} per commit", f"{out[batch]:10,.0f} puts/s")
        finally:
            env.close()
    return out


if __name__ == "__main__":
    run()
