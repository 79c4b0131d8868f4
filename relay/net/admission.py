"""Admission of new connections: a node-wide cap, and a per-address cap on
connections that have not authenticated yet.

A node counts every accepted WebSocket (devices, peers, linking devices) against
``max_connections``, and every connection that has not yet authenticated
(``auth`` / ``peer_auth``) against ``max_pending_per_ip`` for its remote
address. Beyond either cap a new connection is refused at the HTTP handshake
(503, :mod:`relay.net.listener`), so idle sockets from one address cannot pile up
(the handshake deadline closes each one after ``handshake_timeout`` anyway).

Addresses are grouped by :func:`address_key`: an IPv4 address, or the /64
prefix of an IPv6 one (one host usually holds a whole /64). Bookkeeping only,
no I/O; the node owns one :class:`Admission` (no globals).

:class:`HandshakeDeadline` is the per-connection timer: a connection must
authenticate, or open a linking mailbox, within ``handshake_timeout`` seconds.
"""

from __future__ import annotations

import ipaddress
from types import TracebackType

import trio

REFUSAL_LOG_INTERVAL = 10.0  # seconds between two log lines about refused connections


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
    gives the place back on exit (idempotent)."""

    def __init__(self, owner: Admission, key: str) -> None:
        self._owner = owner
        self.key = key
        self.pending = True
        self._open = True

    def authenticated(self) -> None:
        """The connection authenticated: it no longer counts as pending (idempotent)."""
        if self.pending and self._open:
            self.pending = False
            self._owner._unpend(self.key)

    def release(self) -> None:
        """The connection ended (idempotent)."""
        if self._open:
            self.authenticated()
            self._open = False
            self._owner.total -= 1

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

    Attributes:
        total: connections admitted and not yet released.
    """

    def __init__(self, max_connections: int, max_pending_per_ip: int) -> None:
        self.max_connections = max_connections
        self.max_pending_per_ip = max_pending_per_ip
        self.total = 0
        self._pending: dict[str, int] = {}
        self._refused = 0
        self._refusal_logged_at = -float("inf")

    @property
    def pending_total(self) -> int:
        """Unauthenticated connections now, all addresses together."""
        return sum(self._pending.values())

    def pending(self, address: object) -> int:
        """How many unauthenticated connections ``address`` (its key) holds."""
        return self._pending.get(address_key(address), 0)

    def admit(self, address: object) -> Ticket:
        """Count a new, unauthenticated connection from ``address``.

        Returns:
            Its :class:`Ticket` (release it when the connection ends).

        Raises:
            Refused: ``max_connections`` are open, or ``address`` already
                holds ``max_pending_per_ip`` unauthenticated connections.
        """
        if self.total >= self.max_connections:
            raise Refused(f"the node is at its limit of {self.max_connections} connections")
        key = address_key(address)
        if self._pending.get(key, 0) >= self.max_pending_per_ip:
            raise Refused(f"too many unauthenticated connections from {key}")
        self._pending[key] = self._pending.get(key, 0) + 1
        self.total += 1
        return Ticket(self, key)

    def _unpend(self, key: str) -> None:
        left = self._pending[key] - 1
        if left:
            self._pending[key] = left
        else:
            del self._pending[key]

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

    def done(self) -> None:
        """The connection authenticated: no deadline any more."""
        self._done.set()

    def extend(self, seconds: float) -> None:
        """Allow at least ``seconds`` more from now (e.g. a linking device waiting
        on its mailbox)."""
        self._scope.deadline = max(self._scope.deadline, trio.current_time() + seconds)

    async def wait(self) -> bool:
        """Wait until :meth:`done` (``False``) or until the deadline passes (``True``)."""
        with self._scope:
            await self._done.wait()
            return False
        return True
