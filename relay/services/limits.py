"""The node's abuse limits as services: rate limits and the queue-quota policy (issue 11).

* :class:`RateLimits` holds one :class:`~relay.services.ratelimit.TokenBuckets` per
  action and kind of key (account, source address, peer node) and refuses with
  ``rate_limited`` and ``retry_after_ms``.
* :class:`QueuePolicy` turns a part to be stored into the charges and
  :class:`~storage.QueueQuota` of its ``enqueue_many`` request: every copy counts
  against its device's queue, its account, its sending account (``u:<user>``) and,
  for forwards, the forwarding node (``n:<node>``). A sender's (or node's) share of
  one device queue is bound, except in the queues of the sender's own account and of
  accounts that wrote to the sender ("correspondents", recorded at their home when
  they send); all strangers together are bound to a share of each queue too, so a
  crowd of fresh accounts cannot fill it either. It also checks a request's fan-out (body bytes times copies) before
  anything is routed.

Settings: :class:`relay.config.abuse.AbuseLimits`; docs/operations.md, "Abuse limits".
"""

from __future__ import annotations

from collections.abc import Callable

import trio

from relay.config.abuse import ADDRESS_ACTIONS, RATE_ACTIONS, AbuseLimits
from relay.errors import PEER_TAG, SENDER_TAG, STRANGERS_TAG, RelayError
from relay.protocol import ErrorCode
from relay.services.ratelimit import TokenBuckets
from storage import QueueQuota, Storage

STRANGERS = STRANGERS_TAG + "strangers"
"""The charge tag of copies from senders none of the part's recipients wrote to: all
strangers together may hold at most ``queue_strangers_share`` of one device queue."""
NEGATIVE_TTL = 30.0
"""Seconds a "did not write to" answer of storage is trusted (another process of the
same home may record the pair meanwhile; this process's own records win at once)."""
MAX_KNOWN_PAIRS = 200_000
"""Correspondent pairs kept in memory (a cache of the durable record) before it is cleared."""


# what a refused user did, where "too many <action> requests" does not say it
_WHAT = {"link_miss": "wrong, used or expired linking codes"}


class RateLimits:
    """The token buckets of one node.

    Args:
        abuse: the node's limits.
        clock: the time source in seconds (default ``trio.current_time``).
    """

    def __init__(self, abuse: AbuseLimits,
                 clock: Callable[[], float] = trio.current_time) -> None:
        self._clock = clock
        self._accounts: dict[str, TokenBuckets] = {}
        self._addresses: dict[str, TokenBuckets] = {}
        for action in RATE_ACTIONS:
            rate, burst = abuse.bucket(action)
            self._accounts[action] = TokenBuckets(rate, burst)
            factor = 1.0 if action in ADDRESS_ACTIONS else abuse.address_rate_factor
            self._addresses[action] = TokenBuckets(rate * factor, burst * factor)

    def take(self, action: str, cost: float = 1, *, account: str | None = None,
             address: str | None = None) -> None:
        """Take ``cost`` tokens of ``action`` from the account's and the address's
        buckets (either may be ``None``: not counted), or none.

        ``account`` is a user id, or a peer node id for ``peer_forward``; ``address``
        a key of :func:`relay.net.admission.address_key`.

        Raises:
            RelayError: ``rate_limited`` with ``retry_after_ms`` and ``quota`` = the action.
        """
        self.take_many([(action, cost)], account=account, address=address)

    def give_back(self, action: str, cost: float = 1, *, account: str | None = None,
                  address: str | None = None) -> None:
        """Return ``cost`` tokens of ``action`` that :meth:`take` took (the request
        turned out not to count, e.g. a ``link_miss`` token of a mailbox that was found)."""
        now = self._clock()
        for buckets, key in ((self._accounts, account), (self._addresses, address)):
            if key is not None:
                buckets[action].give_back(key, cost, now)

    def take_many(self, costs: list[tuple[str, float]], *, account: str | None = None,
                   address: str | None = None) -> None:
        """:meth:`take` for several ``(action, cost)`` at once: all are taken, or none.

        Raises:
            RelayError: ``rate_limited`` naming the action that waits longest.
        """
        now = self._clock()
        checks = [(action, buckets[action], key, cost)
                  for action, cost in costs
                  for buckets, key in ((self._accounts, account), (self._addresses, address))
                  if key is not None]
        worst: tuple[float, str] | None = None
        for action, bucket, key, cost in checks:
            refused = bucket.check(key, cost, now)
            if refused is not None and (worst is None or refused.retry_after > worst[0]):
                worst = (refused.retry_after, action)
        if worst is not None:
            wait, action = worst
            what = _WHAT.get(action, action.replace("_", " ") + " requests")
            raise RelayError(ErrorCode.RATE_LIMITED, f"too many {what}; retry in {wait:.3g} s",
                             retry_after_ms=max(1, int(wait * 1000) + 1), quota=action)
        for _, bucket, key, cost in checks:
            bucket.take(key, cost, now)


class QueuePolicy:
    """Charges, byte quotas and share exemptions of the parts a node stores.

    Args:
        abuse: the node's limits.
        storage: where correspondents are recorded.
    """

    def __init__(self, abuse: AbuseLimits, storage: Storage,
                 clock: Callable[[], float] = trio.current_time) -> None:
        self._abuse = abuse
        self._storage = storage
        self._clock = clock
        self._known: set[tuple[str, str]] = set()  # (user, other): user wrote to other
        self._unknown: dict[tuple[str, str], float] = {}  # pair -> when storage said no
        self._quotas: dict[str | None, QueueQuota] = {}  # peer -> quota without exemptions
        share = abuse.queue_device_bytes
        self._sender_share = max(1, int(share * abuse.queue_sender_share))
        self._peer_share = max(1, int(share * abuse.queue_peer_share))
        self._strangers_share = max(1, int(share * abuse.queue_strangers_share))
        self.retry_after_ms = int(abuse.quota_retry_after * 1000)

    # ---------------------------------------------------------------- at the sender's home

    def check_fanout(self, body_bytes: int) -> None:
        """Refuse a request whose copies together exceed what one sender may queue.

        Raises:
            RelayError: ``quota_exceeded`` (``quota`` = ``fanout``).
        """
        if body_bytes > self._abuse.queue_sender_bytes:
            raise RelayError(ErrorCode.QUOTA_EXCEEDED,
                             f"the copies of this request ({body_bytes} bytes) exceed the "
                             f"sender quota of {self._abuse.queue_sender_bytes} bytes",
                             quota="fanout", retry_after_ms=self.retry_after_ms)

    async def note_sent(self, sender: str, recipients: list[str]) -> None:
        """Durably record that ``sender`` wrote to ``recipients`` (new pairs only).

        Raises:
            StorageFull, StorageUnavailable: the record could not be written.
        """
        new = [r for r in dict.fromkeys(recipients)
               if r != sender and (sender, r) not in self._known]
        if not new:
            return
        await self._storage.add_correspondents(sender, new)
        self._remember([(sender, r) for r in new])

    # ---------------------------------------------------------------- at the recipients' home

    async def quota_for(
        self, sender: str, recipients: list[str], peer_id: str | None
    ) -> tuple[tuple[str, ...], QueueQuota]:
        """The charges and quota of one part from ``sender`` (forwarded by ``peer_id``,
        ``None``: sent here) to ``recipients`` (all homed here)."""
        exempt = frozenset([r for r in recipients if await self._wrote_to(r, sender)])
        if not exempt:  # the common case: one quota object per peer, reused
            quota = self._quotas.get(peer_id)
            if quota is None:
                _, quota = self._build(sender, peer_id, exempt)
                self._quotas[peer_id] = quota
            return self._charges(sender, peer_id, strangers=True), quota
        return self._build(sender, peer_id, exempt)

    def quota_of_peer(self, peer_id: str) -> tuple[tuple[str, ...], QueueQuota]:
        """The charges and quota of an envelope that peer ``peer_id`` queues for a user
        homed here on its own behalf (a ``bounce``): the queue and account quotas and the
        peer's byte quota and share; no sender is charged (the envelope names the
        receiving user as its sender)."""
        a = self._abuse
        return (PEER_TAG + peer_id,), QueueQuota(
            device_bytes=a.queue_device_bytes, account_bytes=a.queue_account_bytes,
            charge_bytes=(a.queue_peer_bytes,), share_bytes=(self._peer_share,))

    @staticmethod
    def _charges(sender: str, peer_id: str | None, *, strangers: bool) -> tuple[str, ...]:
        charges = (SENDER_TAG + sender,)
        if peer_id is not None:
            charges += (PEER_TAG + peer_id,)
        return charges + (STRANGERS,) if strangers else charges

    def _build(self, sender: str, peer_id: str | None,
               exempt: frozenset[str]) -> tuple[tuple[str, ...], QueueQuota]:
        a = self._abuse
        charges = [SENDER_TAG + sender]
        totals: list[int | None] = [a.queue_sender_bytes]
        shares: list[int | None] = [self._sender_share]
        if peer_id is not None:
            charges.append(PEER_TAG + peer_id)
            totals.append(a.queue_peer_bytes)
            shares.append(self._peer_share)
        if not exempt:  # from a stranger to everyone in the part: the strangers' pool
            charges.append(STRANGERS)
            totals.append(None)
            shares.append(self._strangers_share)
        return tuple(charges), QueueQuota(
            device_bytes=a.queue_device_bytes, account_bytes=a.queue_account_bytes,
            charge_bytes=tuple(totals), share_bytes=tuple(shares), share_exempt=exempt)

    async def _wrote_to(self, user: str, other: str) -> bool:
        pair = (user, other)
        if user == other or pair in self._known:
            return True
        now = self._clock()
        said_no = self._unknown.get(pair)
        if said_no is not None and now - said_no < NEGATIVE_TTL:
            return False
        if await self._storage.is_correspondent(user, other):
            self._remember([pair])
            self._unknown.pop(pair, None)
            return True
        if len(self._unknown) >= MAX_KNOWN_PAIRS:
            self._unknown.clear()
        self._unknown[pair] = now
        return False

    def _remember(self, pairs: list[tuple[str, str]]) -> None:
        if len(self._known) + len(pairs) > MAX_KNOWN_PAIRS:
            self._known.clear()
        self._known.update(pairs)
