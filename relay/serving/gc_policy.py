"""The garbage collector of a node process: freeze what start-up made, collect young
objects less often.

CPython's cyclic collector stops the whole process while it runs. With its defaults
a node under steady traffic ran a young collection every ~50 messages, and every few
seconds a full one that walks every object the process holds, ~50,000 of them from
imports alone: 40-100 ms each on the shared development VM (docs/benchmarks.md,
"Session 6"). Every message in flight waits for such a pause, and at a paced rate
near a core the backlog it leaves takes longer still to drain: the pauses set the
tail latency. Two settings take them away:

* :func:`settle` moves every object alive at start-up (modules, classes, the
  compiled frame converters) into the permanent generation (``gc.freeze``), so a
  full collection walks only what the node made since;
* the young generation's threshold is raised from 700 to :data:`GEN0_THRESHOLD`
  net allocations. A message's objects (frames, events, tickets) die by reference
  counting, so steady traffic rarely grows the young generation that far and
  almost never triggers a collection; cyclic garbage (what a closed connection
  leaves, ~240 objects) is still collected, once enough has piled up (a young
  collection then walks at most about that many objects: a few milliseconds).

Process-wide settings: only the ``wa-relay`` command calls :func:`settle`, before
it starts its event loop (nodes run in-process by tests keep the defaults).
"""

from __future__ import annotations

import gc

__all__ = ["GEN0_THRESHOLD", "settle"]

GEN0_THRESHOLD = 10_000
"""Net allocations of container objects between two young collections (CPython: 700)."""


def settle(gen0: int = GEN0_THRESHOLD) -> tuple[int, int, int]:
    """Collect once, freeze every object left (``gc.freeze``) and set the young
    generation's threshold to ``gen0`` (the older two keep theirs).

    Returns:
        The thresholds in force before (``gc.get_threshold()``), for a caller that
        puts them back (tests).

    Raises:
        ValueError: ``gen0`` is below 1.
    """
    if gen0 < 1:
        raise ValueError(f"the young generation's threshold must be at least 1, not {gen0}")
    before = gc.get_threshold()
    gc.collect()
    gc.freeze()
    gc.set_threshold(gen0, before[1], before[2])
    return before
