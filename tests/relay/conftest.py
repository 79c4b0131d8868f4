"""Fixtures of the relay tests: in-process nodes on 127.0.0.1 with memory storage."""

from __future__ import annotations

import pytest
from relay_harness import Cluster, make_configs


@pytest.fixture
async def cluster3(nursery) -> Cluster:
    """Three running nodes n1..n3 (memory storage), stopped with the test's nursery."""
    c = Cluster(nursery, make_configs(3))
    await c.start_all()
    return c


@pytest.fixture
async def cluster2(nursery) -> Cluster:
    """Two running nodes n1, n2 (memory storage), stopped with the test's nursery."""
    c = Cluster(nursery, make_configs(2))
    await c.start_all()
    return c


@pytest.fixture
async def cluster2_n1_only(nursery) -> Cluster:
    """Two nodes of which only n1 runs; n2 was never started (the test starts it)."""
    c = Cluster(nursery, make_configs(2))
    await c.start("n1")
    return c


@pytest.fixture
async def node1(nursery) -> Cluster:
    """A one-node cluster (n1)."""
    c = Cluster(nursery, make_configs(1))
    await c.start("n1")
    return c
