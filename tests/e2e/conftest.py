"""Fixtures of the end-to-end suite: real relay nodes as subprocesses on 127.0.0.1."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from .harness import Cluster


@pytest.fixture
def cluster(tmp_path) -> Iterator[Cluster]:
    """Three running nodes (``wa-relay serve`` each) under ``tmp_path/cluster``; all
    processes are stopped when the test ends, whatever happened."""
    c = Cluster(tmp_path / "cluster", nodes=3)
    try:
        c.start_all()
        yield c
    finally:
        c.close()


@pytest.fixture
def single_node(tmp_path) -> Iterator[Cluster]:
    """A one-node cluster (node ``n1``), stopped when the test ends."""
    c = Cluster(tmp_path / "cluster", nodes=1)
    try:
        c.start_all()
        yield c
    finally:
        c.close()
