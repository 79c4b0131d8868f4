"""The shape of a service handler and of the caller it serves."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from relay.protocol.frames import Frame


@dataclass(frozen=True, slots=True)
class Caller:
    """Who sent a request on a connection.

    Attributes:
        user_id, device_id: the authenticated device (``None`` before ``auth``
            and on peer links).
        peer_id: the authenticated peer node (``None`` on device connections).
        address: the connection's address key
            (:func:`relay.net.admission.address_key`), for per-address limits.
    """

    user_id: str | None = None
    device_id: int | None = None
    peer_id: str | None = None
    address: str | None = None

    @property
    def is_peer(self) -> bool:
        """True on an authenticated node-to-node link."""
        return self.peer_id is not None

    def device(self) -> tuple[str, int]:
        """``(user_id, device_id)`` of an authenticated device (the connection state
        machine admits device-only requests only after ``auth``)."""
        assert self.user_id is not None and self.device_id is not None
        return self.user_id, self.device_id


Handler = Callable[[Caller, Frame], Awaitable[Frame | None]]
"""Serves one request: returns its answer (``None``: no answer), or raises a
refusal from :data:`relay.errors.KNOWN_REFUSALS`, answered with its ``error``."""

Table = dict[type[Frame], Handler]
"""Request frame type -> handler."""
