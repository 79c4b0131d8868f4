"""Ceilings measured in the same run as the sends: the transport (raw
trio-websocket), the disk (raw LMDB durable puts, batched) and the storage
layer's group commit (``LmdbStorage.enqueue``, one task vs many)."""

from __future__ import annotations

import trio

from . import raw_lmdb, raw_storage, raw_ws
from .scenario import BenchContext

FRAME_SIZE = 512  # bytes: about one `send` frame of a 100-character text
ENVELOPE_SIZE = 530  # bytes: one stored envelope of a 100-character text (pre-key Olm)


async def transport(ctx: BenchContext) -> None:
    """Scenario: raw trio-websocket frames/s and round trips/s on one loopback connection."""
    r = ctx.report
    figs = await raw_ws.run_figures(n=8_000 if ctx.quick else 40_000, size=FRAME_SIZE)
    r.note(f"one loopback connection, {FRAME_SIZE} B binary frames, 64 KiB receive buffer")
    r.figure("frames", "frames/s, one way, back to back", figs["frames_per_s"], "frames/s")
    r.figure("round_trips", "round trips/s, one request at a time",
             figs["round_trips_per_s"], "rt/s")


async def disk(ctx: BenchContext) -> None:
    """Scenario: raw LMDB durable puts/s at several puts per transaction."""
    r = ctx.report
    seconds = 0.3 if ctx.quick else 1.5
    figs = await trio.to_thread.run_sync(raw_lmdb.run_figures, ENVELOPE_SIZE, seconds)
    r.note(f"py-lmdb, sync+metasync, {ENVELOPE_SIZE} B values, ~{seconds} s per batch size")
    for batch, rate in figs.items():
        r.figure(f"batch{batch}", f"durable puts/s, {batch:>4} per commit", rate, "puts/s")


async def group_commit(ctx: BenchContext) -> None:
    """Scenario: ``LmdbStorage.enqueue`` calls/s, sequential vs 1000 concurrent tasks."""
    r = ctx.report
    tasks, per_task = (1000, 3) if ctx.quick else (1000, 20)
    figs = await raw_storage.run_figures(
        ctx.tmp / "store", size=ENVELOPE_SIZE, seconds=0.3 if ctx.quick else 1.5,
        tasks=tasks, per_task=per_task,
    )
    r.note(f"storage.lmdb.LmdbStorage, one {ENVELOPE_SIZE} B envelope per enqueue, "
           "each durable on return")
    r.figure("sequential", "enqueues/s, one task awaiting each", figs["sequential"], "enq/s")
    r.figure("concurrent", f"enqueues/s, {tasks} concurrent tasks", figs["concurrent"], "enq/s")
    r.figure("batch", "  mean enqueues per transaction", figs["batch"], "ops/txn", ",.1f")
