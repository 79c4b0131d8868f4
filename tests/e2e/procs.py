"""Process-level helpers for the end-to-end tests: executables, environment, ports, /proc, scans."""

from __future__ import annotations

import os
import random
import socket
import sys
from collections.abc import Iterable
from pathlib import Path

HOST = "127.0.0.1"


class HarnessError(AssertionError):
    """A subprocess did not behave as the CLI contract says (fails the test)."""


# ----------------------------------------------------------------- executables


def tool(name: str) -> list[str]:
    """The argv prefix that runs console script ``name`` of this virtualenv.

    Prefers the script next to ``sys.executable``; falls back to running the
    entry point's module with ``sys.executable``.
    """
    script = Path(sys.executable).parent / name
    if script.exists():
        return [str(script)]
    entry = {"wa-relay": "relay.__main__:main", "wa-cli": "cli.commands:main"}[name]
    module, func = entry.split(":")
    return [sys.executable, "-c", f"import sys; from {module} import {func}; sys.exit({func}())"]


def subprocess_env() -> dict[str, str]:
    """Environment for child processes: unbuffered output, no inherited ``WA_HOME``."""
    env = dict(os.environ)
    env.pop("WA_HOME", None)
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("PYTHONDONTWRITEBYTECODE", "1")
    return env


# ----------------------------------------------------------------------- ports


def _ephemeral_range() -> tuple[int, int]:
    try:
        lo, hi = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(lo), int(hi)
    except (OSError, ValueError):
        return 32768, 60999


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((HOST, port))
        except OSError:
            return False
    return True


def free_base_port(count: int, rng: random.Random | None = None) -> int:
    """A base port ``P`` such that ``P .. P+count-1`` are all free on 127.0.0.1 right now.

    Candidates are taken below the kernel's ephemeral range, so that outgoing
    connections (peer links, wa-cli) cannot grab a port of a node that is down
    and about to be restarted. Falls back to a port-0 probe. Another process
    may still take a port before the node binds it: callers retry.
    """
    rng = rng or random.Random()
    lo, _ = _ephemeral_range()
    upper = min(lo, 65536) - count
    if upper > 20000:
        for _ in range(200):
            base = rng.randrange(20000, upper)
            if all(_bindable(base + i) for i in range(count)):
                return base
    for _ in range(200):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind((HOST, 0))
            base = s.getsockname()[1]
        if base + count < 65536 and all(_bindable(base + i) for i in range(count)):
            return base
    raise HarnessError(f"no range of {count} free ports found")


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
