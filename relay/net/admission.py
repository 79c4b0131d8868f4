"""Admission of new connections: a node-wide cap, and caps on connections that
have not authenticated yet, per address and in all.

A node counts every accepted WebSocket (devices, peers, linking devices) against
``max_connections``, and every connection that has not yet authenticated
(``auth`` / ``peer_auth``) or opened a linking mailbox against
``max_pending_per_ip`` for its remote address and against ``max_pending`` in all.
So ``max_connections - max_pending`` slots are reserved for authenticated devices,
peer nodes and linking devices: unauthenticated traffic can never take them.
With ``max_per_ip``, an address also holds at most that many connections of every
kind: accounts are free and each lists up to 8 devices, so one address could
otherwise fill every reserved slot with authenticated connections.

When a new connection finds its address (or the whole pending pool) at its cap,
the *oldest* unauthenticated connection of that address (of the pool) that has
had at least ``PENDING_GRACE`` seconds to authenticate is evicted to make room
(its connection is closed): an honest device authenticates within a round trip,
so idle sockets cannot keep it out, however many an attacker opens. Only when
none is old enough is the new connection refused at the HTTP handshake (503,
:mod:`relay.net.listener`). The handshake deadline closes every connection
that has not authenticated after ``handshake_timeout`` anyway.

Addresses are grouped by :func:`address_key`: an IPv4 address, or the /64
prefix of an IPv6 one (one host usually holds a whole /64). Bookkeeping only,
no I/O; the node owns one :class:`Admission` (no globals).

:class:`HandshakeDeadline` is the per-connection timer: a connection must
authenticate, or open a linking mailbox, within ``handshake_timeout`` seconds.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from types import TracebackType

import trio

REFUSAL_LOG_INTERVAL = 10.0  # seconds between two log lines about refused connections
PENDING_GRACE = 1.0
"""Seconds an unauthenticated connection may not be evicted for a newer one."""


def address_key(address: object) -> str:
    """The key that per-address caps count under: the IPv4 address, the /64
    network of an IPv6 address (an IPv4-mapped one counts as its IPv4 address),
    or ``str(address)`` for anything else (e.g. a Unix socket)."""
    try:
        ip = ipaddress.ip_address(str(address))
    except ValueError:
        return str(address)
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


class Refused(Exception):
    """A new connection is over a cap.

    Attributes:
        reason: short text for the log and the HTTP 503 body.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Ticket:
    """One admitted connection's place in the counts; a context manager that
    gives the place back on exit (idempotent).

    Attributes:
        key: the address key. since: when it was admitted (the admission's clock).
        on_evict: called (once) if the admission evicts this pending connection for a
            newer one; the connection should close. Set by the connection's owner.
    """

    def __init__(self, owner: Admission, key: str, since: float) -> None:
        self._owner = owner
        self.key = key
        self.since = since
        self.pending = True
        self.on_evict: Callable[[], None] | None = None
        self._open = True

    def authenticated(self) -> None:
        """The connection authenticated (or became a linking device): it no longer
        counts as pending (idempotent)."""
        if self.pending and self._open:
            self.pending = False
            self._owner._unpend(self)

    def release(self) -> None:
        """The connection ended (idempotent)."""
        if self._open:
            self.authenticated()
            self._open = False
            self._owner._leave(self)

    def __enter__(self) -> Ticket:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()


class Admission:
    """The connection counts of one node.

    Args:
        max_connections: most connections open at once (all kinds).
        max_pending_per_ip: most not-yet-authenticated connections per
            :func:`address_key`.
        max_pending: most not-yet-authenticated connections in all (default: half
            of ``max_connections``; the rest is reserved for authenticated ones).
        clock: the time source (default ``trio.current_time``).
        max_per_ip: most connections of all kinds per :func:`address_key`
            (``None``: no such cap).

    Attributes:
        total: connections admitted and not yet released.
        evicted: pending connections evicted for newer ones so far.
    """

    def __init__(self, max_connections: int, max_pending_per_ip: int,
                 max_pending: int | None = None,
                 clock: Callable[[], float] = trio.current_time, *,
                 max_per_ip: int | None = None) -> None:
        self.max_connections = max_connections
        self.max_per_ip = max_per_ip
        self._per_key: dict[str, int] = {}  # key -> connections of every kind
        self.max_pending_per_ip = max_pending_per_ip
        self.max_pending = max(1, max_connections // 2) if max_pending is None else max_pending
        self.total = 0
        self.evicted = 0
        self._clock = clock
        self._pending: dict[str, dict[Ticket, None]] = {}  # key -> tickets, oldest first
        self._queue: dict[Ticket, None] = {}  # every pending ticket, oldest first
        self._refused = 0
        self._refusal_logged_at = -float("inf")

    @property
    def pending_total(self) -> int:
        """Unauthenticated connections now, all addresses together."""
        return len(self._queue)

    def pending(self, address: object) -> int:
        """How many unauthenticated connections ``address`` (its key) holds."""
        return len(self._pending.get(address_key(address), ()))

    def admit(self, address: object) -> Ticket:
        """Count a new, unauthenticated connection from ``address``, evicting the
        oldest pending one of the address (or of the pool) past :data:`PENDING_GRACE`
        if a pending cap is reached.

        Returns:
            Its :class:`Ticket` (release it when the connection ends).

        Raises:
            Refused: ``max_connections`` are open (or ``max_per_ip`` from the
                address), or a pending cap is reached and no pending connection is
                old enough to evict.
        """
        now = self._clock()
        key = address_key(address)
        mine = self._pending.get(key, {})
        if (self.max_per_ip is not None and self._per_key.get(key, 0) >= self.max_per_ip
                and not self._evict(mine, now)):
            raise Refused(f"too many connections from {key}")
        if len(mine) >= self.max_pending_per_ip and not self._evict(mine, now):
            raise Refused(f"too many unauthenticated connections from {key}")
        if len(self._queue) >= self.max_pending and not self._evict(self._queue, now):
            raise Refused("too many unauthenticated connections")
        if self.total >= self.max_connections:
            raise Refused(f"the node is at its limit of {self.max_connections} connections")
        ticket = Ticket(self, key, now)
        self._pending.setdefault(key, {})[ticket] = None
        self._queue[ticket] = None
        self.total += 1
        self._per_key[key] = self._per_key.get(key, 0) + 1
        return ticket

    def _leave(self, ticket: Ticket) -> None:
        self.total -= 1
        left = self._per_key[ticket.key] - 1
        if left:
            self._per_key[ticket.key] = left
        else:
            del self._per_key[ticket.key]

    def _evict(self, tickets: dict[Ticket, None], now: float) -> bool:
        """Evict the oldest ticket of ``tickets`` if it is past the grace period."""
        oldest = next(iter(tickets), None)
        if oldest is None or now - oldest.since < PENDING_GRACE:
            return False
        self.evicted += 1
        evict = oldest.on_evict
        oldest.release()
        if evict is not None:
            evict()
        return True

    def _unpend(self, ticket: Ticket) -> None:
        mine = self._pending[ticket.key]
        del mine[ticket]
        if not mine:
            del self._pending[ticket.key]
        del self._queue[ticket]

    def note_refusal(self, now: float) -> int:
        """Count one refused connection; return how many to report in a log line
        now (at most one line per :data:`REFUSAL_LOG_INTERVAL` s), else 0."""
        self._refused += 1
        if now - self._refusal_logged_at < REFUSAL_LOG_INTERVAL:
            return 0
        count, self._refused, self._refusal_logged_at = self._refused, 0, now
        return count


class HandshakeDeadline:
    """When a new connection must be done with its handshake (created in Trio).

    Args:
        seconds: time from now to authenticate or open a linking mailbox.
    """

    def __init__(self, seconds: float) -> None:
        self._scope = trio.CancelScope(deadline=trio.current_time() + seconds)
        self._done = trio.Event()
        self._linking = False

    def done(self) -> None:
        """The connection authenticated: no deadline any more."""
        self._done.set()

    def linking(self, seconds: float) -> None:
        """The connection opened a linking mailbox: it may wait ``seconds`` from now
        for it, once. Later calls change nothing (a connection cannot renew its life
        by opening mailbox after mailbox)."""
        if not self._linking:
            self._linking = True
            self._scope.deadline = max(self._scope.deadline, trio.current_time() + seconds)

    async def wait(self) -> bool:
        """Wait until :meth:`done` (``False``) or until the deadline passes (``True``)."""
        with self._scope:
            await self._done.wait()
            return False
        return True
