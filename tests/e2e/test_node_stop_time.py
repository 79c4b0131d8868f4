"""Fault-suite finding 14 (docs/reliability.md): a node with its peer links up stops
promptly on SIGTERM. Before the fix each outgoing peer link's closing handshake
waited out ``CLOSE_TIMEOUT`` (2 s): the link's own exit dropped the stream while the
node's 1001 close still waited for the peer's reply. Real ``wa-relay serve`` processes."""

from __future__ import annotations

import time
from pathlib import Path

from relay.testing import ProcessCluster

STOP_BOUND = 1.5  # seconds; about 0.2 s on a quiet machine, 2.2 s before the fix


def _wait_for_lines(log: Path, lines: list[str], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = log.read_text() if log.exists() else ""
        if all(line in text for line in lines):
            return
        time.sleep(0.05)  # polling a file, bounded by the deadline
    raise AssertionError(f"{log.name} never logged {lines}")


def test_sigterm_with_peer_links_up_stops_within_a_second_or_so(tmp_path: Path) -> None:
    cluster = ProcessCluster(tmp_path / "cluster", 3)
    try:
        cluster.start_all()
        root = tmp_path / "cluster"
        _wait_for_lines(root / "n1.err", ["peer link to n2 up", "peer link to n3 up"], 30)
        _wait_for_lines(root / "n2.err", ["peer link to n1 up"], 30)
        _wait_for_lines(root / "n3.err", ["peer link to n1 up"], 30)
        n1 = cluster.procs[("n1", 0)]
        started = time.monotonic()
        code, killed = n1.stop(10)
        took = time.monotonic() - started
        assert (code, killed) == (0, False)
        log = (root / "n1.err").read_text()
        assert "stopping: closing 2 connection(s) with 1001" in log
        assert "still open after" not in log
        stopping = log[log.index("stopping: closing"):]  # its own closes are no outage
        assert "; reconnecting" not in stopping, stopping
        assert took < STOP_BOUND, f"n1 took {took:.2f} s to stop"
    finally:
        cluster.stop_all()
