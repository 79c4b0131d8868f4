"""Free TCP ports on the loopback interface, for nodes that must know their URLs
before they listen (the cluster file names every node's URL)."""

from __future__ import annotations

import random
import socket
from pathlib import Path

LOOPBACK = "127.0.0.1"


def free_ports(n: int, host: str = LOOPBACK, *, rng: random.Random | None = None) -> list[int]:
    """``n`` distinct TCP ports of ``host`` that are free right now.

    Taken between 20000 and the kernel's ephemeral range where it can (as
    :func:`free_base_port`): a port the kernel hands out for outgoing connections
    can be taken by one (a peer link, a wa-cli) while its node is down and about
    to be restarted, and the restart then fails with EADDRINUSE. Falls back to
    ports the kernel hands out. Another process may still take one before the
    caller binds it.

    Raises:
        OSError: a socket could not be bound.
    """
    rng = rng or random.Random()
    upper = min(_ephemeral_low(), 65536)
    if upper - 20000 > 4 * n:
        chosen: list[int] = []
        for _ in range(200 * n):
            port = rng.randrange(20000, upper)
            if port not in chosen and port_is_free(port, host):
                chosen.append(port)
                if len(chosen) == n:
                    return chosen
    socks: list[socket.socket] = []
    try:
        for _ in range(n):
            s = socket.socket()
            socks.append(s)
            s.bind((host, 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _ephemeral_low() -> int:
    """The lowest port of the kernel's ephemeral range (32768 if unknown)."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def port_is_free(port: int, host: str = LOOPBACK) -> bool:
    """True if ``host:port`` can be bound right now (with ``SO_REUSEADDR``)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def free_base_port(count: int, *, host: str = LOOPBACK, rng: random.Random | None = None) -> int:
    """A port ``P`` such that ``P .. P+count-1`` are all free on ``host`` right now
    (for ``wa-relay cluster --base-port P`` / ``init-cluster``).

    Candidates are taken between 20000 and the kernel's ephemeral range, so that
    outgoing connections (peer links, wa-cli) cannot grab the port of a node that
    is down and about to be restarted; if that range is too small, falls back to
    ranges starting at a port the kernel hands out. Another process may still take
    a port before the node binds it: callers retry on a new range.

    Raises:
        OSError: no such range found after 200 tries of each kind.
    """
    rng = rng or random.Random()
    upper = min(_ephemeral_low(), 65536) - count
    if upper > 20000:
        for _ in range(200):
            base = rng.randrange(20000, upper)
            if all(port_is_free(base + i, host) for i in range(count)):
                return base
    for _ in range(200):
        (base,) = free_ports(1, host)
        if base + count < 65536 and all(port_is_free(base + i, host) for i in range(count)):
            return base
    raise OSError(f"no range of {count} free ports found on {host}")
