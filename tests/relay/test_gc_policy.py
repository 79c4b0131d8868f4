"""relay.serving.gc_policy: what ``wa-relay`` does to the collector before it serves."""

from __future__ import annotations

import gc

import pytest

from relay.serving import gc_policy


@pytest.fixture
def restored_gc():
    before = gc.get_threshold()
    yield before
    gc.unfreeze()
    gc.set_threshold(*before)


def test_settle_freezes_startup_objects_and_raises_the_young_threshold(restored_gc):
    tracked = len(gc.get_objects())
    assert gc.get_freeze_count() == 0
    assert gc_policy.settle(12_345) == restored_gc
    assert gc.get_threshold() == (12_345, restored_gc[1], restored_gc[2])
    # everything alive now sits in the permanent generation: no collection walks it
    assert gc.get_freeze_count() > tracked // 2
    assert len(gc.get_objects()) < tracked // 10


def test_settle_keeps_collecting_new_cycles(restored_gc):
    gc_policy.settle()
    cycle: list = []
    cycle.append(cycle)
    del cycle
    assert gc.collect() >= 1


def test_settle_refuses_a_zero_threshold(restored_gc):
    with pytest.raises(ValueError, match="at least 1"):
        gc_policy.settle(0)
    assert gc.get_freeze_count() == 0
