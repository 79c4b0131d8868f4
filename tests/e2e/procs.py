"""Process-level helpers for the end-to-end tests: executables, environment, ports, /proc, scans."""

from __future__ import annotations

import random
from collections.abc import Iterable
from pathlib import Path

from relay.testing import LOOPBACK, child_env, tool
from relay.testing import free_base_port as _free_base_port

__all__ = [
    "HOST", "HarnessError", "find_markers", "free_base_port", "subprocess_env", "tool", "vm_rss_kib",
]

HOST = LOOPBACK


class HarnessError(AssertionError):
    """A subprocess did not behave as the CLI contract says (fails the test)."""


def subprocess_env() -> dict[str, str]:
    """Environment for child processes: unbuffered output, no inherited ``WA_HOME``,
    no bytecode written."""
    env = child_env()
    env.setdefault("PYTHONDONTWRITEBYTECODE", "1")
    return env


def free_base_port(count: int, rng: random.Random | None = None) -> int:
    """A base port ``P`` such that ``P .. P+count-1`` are all free on 127.0.0.1 right
    now, below the ephemeral range (:func:`relay.testing.free_base_port`). Another
    process may still take a port before the node binds it: callers retry.

    Raises:
        HarnessError: no such range found.
    """
    try:
        return _free_base_port(count, host=HOST, rng=rng)
    except OSError as exc:
        raise HarnessError(f"no range of {count} free ports found") from exc


def vm_rss_kib(pid: int) -> int:
    """Resident set size of process ``pid`` in KiB, from /proc/PID/status."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise HarnessError(f"no VmRSS for pid {pid}")


def find_markers(paths: Iterable[Path], markers: Iterable[str]) -> dict[str, list[str]]:
    """Which ``markers`` (as UTF-8 bytes) occur in which files.

    Reads each file in chunks with an overlap, so a marker spanning a chunk
    boundary is still found; sparse LMDB files are fine.

    Returns:
        ``{marker: [path, ...]}`` for every marker found at least once.
    """
    needles = [(m, m.encode("utf-8")) for m in markers]
    overlap = max(len(b) for _, b in needles) if needles else 0
    found: dict[str, list[str]] = {}
    for path in paths:
        prev = b""
        with path.open("rb") as f:
            while chunk := f.read(1 << 20):
                window = prev + chunk
                for m, b in needles:
                    if b in window and str(path) not in found.get(m, []):
                        found.setdefault(m, []).append(str(path))
                prev = window[-overlap:]
    return found
