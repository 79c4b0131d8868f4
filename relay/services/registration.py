"""Registration policy: who may create an account (publish a first device list) here.

A node's ``registration`` setting is ``open`` (anyone; the default of ``wa-relay
cluster``), ``invite`` (a first list needs a single-use token issued by the operator
with ``wa-relay admin invite``, stored by its SHA-256 in the node's storage) or
``closed`` (no new accounts; existing ones keep working). Account creation is
rate-limited per source address (``account_create_rate`` / ``_burst``) whatever the
policy. Later lists of an existing account are not affected.
"""

from __future__ import annotations

import hashlib
import secrets
import time

from relay.errors import RelayError
from relay.protocol import ErrorCode
from relay.services.limits import RateLimits
from storage import Storage

TOKEN_BYTES = 18
"""Random bytes of an invite token (URL-safe base64: 24 characters)."""


def token_hash(token: str) -> bytes:
    """The SHA-256 of an invite token, the form storage keeps."""
    return hashlib.sha256(token.encode("utf-8")).digest()


async def issue_invite(storage: Storage, ttl: float, *, now: float | None = None) -> str:
    """Create a single-use invite token valid for ``ttl`` seconds and store its hash.

    Returns:
        The token (shown once; only its hash is kept).

    Raises:
        StorageFull, StorageUnavailable: nothing stored.
    """
    token = secrets.token_urlsafe(TOKEN_BYTES)
    await storage.invite_add(token_hash(token), (time.time() if now is None else now) + ttl)
    return token


class Registration:
    """The registration policy of one node.

    Args:
        policy: ``"open"``, ``"invite"`` or ``"closed"``.
        storage: where invites are kept.
        rates: the node's token buckets (``account_create`` per address).
    """

    def __init__(self, policy: str, storage: Storage, rates: RateLimits) -> None:
        if policy not in ("open", "invite", "closed"):
            raise ValueError(f"unknown registration policy {policy!r}")
        self.policy = policy
        self._storage = storage
        self._rates = rates

    async def admit(self, invite: str | None, address: str | None) -> None:
        """Admit the creation of one account from ``address`` (call it only for a
        user's first list, after the list itself was checked); consumes ``invite``.

        Raises:
            RelayError: ``unauthorized`` (closed, or a missing, unknown, used or expired
                invite; ``quota`` = ``registration``), ``rate_limited``
                (``account_create``).
        """
        if self.policy == "closed":
            raise RelayError(ErrorCode.UNAUTHORIZED, "this node does not accept new accounts",
                             quota="registration")
        self._rates.take("account_create", address=address or "?")
        if self.policy == "invite":
            if not invite:
                raise RelayError(ErrorCode.UNAUTHORIZED,
                                 "this node needs an invite to create an account",
                                 quota="registration")
            if not await self._storage.invite_use(token_hash(invite)):
                raise RelayError(ErrorCode.UNAUTHORIZED,
                                 "the invite is unknown, used or expired", quota="registration")
