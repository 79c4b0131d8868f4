"""The storage layer's group commit: :class:`storage.lmdb.LmdbStorage` ``enqueue``
calls per second, one at a time versus many concurrent tasks.

Every ``enqueue`` is durable when it returns. One task awaiting each call in turn
gets one transaction (one fsync pair) per call; ``tasks`` concurrent tasks let the
single writer batch whatever is queued into one transaction, so the rate should
approach the raw batched LMDB figure.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import trio

from storage.lmdb import LmdbStorage

USER = "a" * 52  # a user_id-shaped key (base32, no "|")


async def sequential(st: LmdbStorage, size: int, seconds: float) -> float:
    """Enqueues/s from one task, each awaited before the next (one envelope each)."""
    envelope = os.urandom(size)
    done = 0
    start = time.perf_counter()
    while done == 0 or time.perf_counter() - start < seconds:
        await st.enqueue([(USER, 0, envelope)])
        done += 1
    return done / (time.perf_counter() - start)


async def concurrent(st: LmdbStorage, size: int, tasks: int, per_task: int) -> tuple[float, float]:
    """``tasks`` tasks (one device queue each) each enqueue ``per_task`` envelopes in turn.

    Returns:
        ``(enqueues/s, mean enqueues per transaction)``.
    """
    envelope = os.urandom(size)
    ops0, batches0 = st.writer.ops, st.writer.batches

    async def one(device_id: int) -> None:
        for _ in range(per_task):
            await st.enqueue([(USER, device_id, envelope)])

    start = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for d in range(tasks):
            nursery.start_soon(one, d + 1)
    elapsed = time.perf_counter() - start
    ops, batches = st.writer.ops - ops0, st.writer.batches - batches0
    return tasks * per_task / elapsed, ops / max(batches, 1)


async def run_figures(
    path: Path, *, size: int = 400, seconds: float = 1.5, tasks: int = 1000, per_task: int = 20,
) -> dict[str, float]:
    """``{"sequential", "concurrent", "batch"}`` for an LMDB store created in ``path``."""
    async with LmdbStorage.open(path) as st:
        seq = await sequential(st, size, seconds)
        conc, batch = await concurrent(st, size, tasks, per_task)
    return {"sequential": seq, "concurrent": conc, "batch": batch}
