"""Fixtures of the end-to-end suite: real relay nodes as subprocesses on 127.0.0.1."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from .harness import Cluster


@pytest.fixture(autouse=True)
def _forked_wa_cli(wa_cli_forks: None) -> None:
    """Every e2e test runs with the session's ``wa-cli`` fork server up: the devices'
    one-shot commands (:meth:`.devices.Device.run`) are forked through it."""


def _running(tmp_path, nodes: int, *, plain: bool = False) -> Iterator[Cluster]:
    """A started cluster of ``nodes`` under ``tmp_path/cluster``; every process is
    stopped when the generator closes, whatever happened."""
    with Cluster(tmp_path / "cluster", nodes=nodes, plain=plain) as c:
        c.start_all()
        yield c


@pytest.fixture
def cluster(tmp_path) -> Iterator[Cluster]:
    """Three running nodes (``wa-relay serve`` each) under ``tmp_path/cluster``; all
    processes are stopped when the test ends, whatever happened."""
    yield from _running(tmp_path, nodes=3)


@pytest.fixture
def single_node(tmp_path) -> Iterator[Cluster]:
    """A one-node cluster (node ``n1``), stopped when the test ends."""
    yield from _running(tmp_path, nodes=1)


@pytest.fixture
def plain_single_node(tmp_path) -> Iterator[Cluster]:
    """A one-node cluster on plain loopback ``ws://`` (for a proxy that reads frames)."""
    yield from _running(tmp_path, nodes=1, plain=True)
