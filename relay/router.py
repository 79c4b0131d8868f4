"""The send path: group recipients by home node, store locally or forward.

For one ``send`` (or ``group_send``, see :mod:`relay.groups`) the sender's
home splits the recipients by home node (:meth:`Router.route`) and handles
every home concurrently:

* its own users: the part is checked against every user's current device
  list (:meth:`Router.check_local`), then all its envelopes are written in one
  atomic, durable ``enqueue`` deduplicated by ``(sender_user, msg_id)``
  (:meth:`Router.enqueue_local`);
* other homes: a ``forward`` (``group_forward``) over the peer link, answered
  ``ok`` once the home did the same. If the destination has pending outbox
  entries, or the link is down or slow, the part goes to the durable outbox
  instead (:meth:`Router.forward`).

The answer is ``stored`` when every home confirmed, ``queued`` when some
part went to the outbox, or the first refusal (in recipient order), e.g.
``stale_devices`` from a live home.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol, TypeVar

import trio

from relay.delivery import pack_envelope
from relay.directory import Directory
from relay.errors import KNOWN_REFUSALS, RelayError, relay_error_from
from relay.federation import Federation, LinkDown, request_within
from relay.outbox import Outbox
from relay.protocol import ErrorCode
from relay.protocol.frames import Envelope, Error, Forward, GroupForward, Ok, Recipient
from relay.ring import Ring
from storage import Storage

FORWARD_TIMEOUT = 5.0


def dedupe_id(sender_user: str, msg_id: bytes) -> bytes:
    """The storage dedupe id of one message at one home."""
    return b"msg\0" + sender_user.encode() + b"\0" + msg_id


def now_ms() -> int:
    """The time a home accepts a message: milliseconds since the Unix epoch."""
    return int(time.time() * 1000)


class _Addressed(Protocol):
    user_id: str


R = TypeVar("R", bound=_Addressed)
P = TypeVar("P", Forward, GroupForward)


class Router:
    """Routes ``send`` requests and stores ``forward`` requests for local users.

    Args:
        node_id: this node's id.
        ring: the cluster ring.
        storage, directory: local state.
        federation, outbox: the way to other homes.
        notify: ``notify(user_id, device_id)`` after envelopes were enqueued.
        max_queue: bound of one device queue.
        forward_timeout: seconds before a forward is given to the outbox.
        on_stale: ``await on_stale(user_id, sender_user)`` before a ``stale_devices``
            refusal hands ``user_id``'s list to ``sender_user`` (records a watcher).
    """

    def __init__(
        self, node_id: str, ring: Ring, storage: Storage, directory: Directory,
        federation: Federation, outbox: Outbox, notify: Callable[[str, int], None], *,
        max_queue: int, forward_timeout: float = FORWARD_TIMEOUT,
        on_stale: Callable[[str, str], Awaitable[None]] | None = None,
    ) -> None:
        self._node_id = node_id
        self._ring = ring
        self._storage = storage
        self._directory = directory
        self._federation = federation
        self._outbox = outbox
        self._notify = notify
        self._max_queue = max_queue
        self.forward_timeout = forward_timeout
        self._on_stale = on_stale

    # ------------------------------------------------------------ ``send``

    async def store_local(self, fwd: Forward) -> None:
        """Check and durably enqueue a forward whose recipients are all homed here.

        All or nothing: if any user is stale or unknown, nothing is written.
        The sender's own user may be a recipient (its other devices); the
        sending device itself needs no copy.
        A repeated ``(sender_user, msg_id)`` is acknowledged without writing again.

        Raises:
            RelayError: ``bad_request`` (malformed or not homed here, repeated
                user), ``unknown_user``, ``stale_devices``.
            StorageFull, QueueFull: nothing stored.
        """
        await self.check_local(fwd.sender_user, fwd.sender_device,
                               [(r.user_id, [c.device_id for c in r.copies])
                                for r in fwd.recipients])
        items = []
        for r in fwd.recipients:
            for c in r.copies:
                env = Envelope(msg_id=fwd.msg_id, sender_user=fwd.sender_user,
                               sender_device=fwd.sender_device, ts=fwd.ts, kind="olm", body=c.body)
                items.append((r.user_id, c.device_id, pack_envelope(env)))
        await self.enqueue_local(items, fwd.sender_user, fwd.msg_id)

    async def send(
        self, sender_user: str, sender_device: int, msg_id: bytes, recipients: list[Recipient]
    ) -> str:
        """Route one message; return ``"stored"`` or ``"queued"``.

        Raises:
            RelayError: ``bad_request`` (no recipients, malformed user id) or the
                first refusal of a home (see the module docstring).
            StorageFull, QueueFull: from the local store or the outbox.
        """
        if not recipients:
            raise RelayError(ErrorCode.BAD_REQUEST, "a send needs at least one recipient")
        ts = now_ms()

        def part(group: list[Recipient]) -> Forward:
            return Forward(id=0, msg_id=msg_id, sender_user=sender_user,
                           sender_device=sender_device, ts=ts, recipients=group)

        return await self.route(recipients, part, self.store_local)

    # ------------------------------------------------------------ shared by send and group_send

    async def route(
        self, recipients: Sequence[R], part: Callable[[list[R]], P],
        store_local: Callable[[P], Awaitable[None]],
    ) -> str:
        """Split ``recipients`` by home node and hand every home its part, concurrently.

        Args:
            recipients: objects with a ``user_id`` (``Recipient``, ``GroupRecipient``).
            part: builds the ``forward`` / ``group_forward`` of one home's recipients.
            store_local: stores the part of the users homed here.

        Returns:
            ``"stored"`` (every home wrote its part) or ``"queued"`` (some part
            is in the outbox).

        Raises:
            RelayError: ``bad_request`` for a malformed user id (before anything
                is routed), else the first refusal in recipient order.
            StorageFull, QueueFull: as a refusal of the home concerned.
        """
        parts: dict[str, list[R]] = {}
        for r in recipients:
            self._directory.check_user_id(r.user_id)
            parts.setdefault(self._ring.home(r.user_id).id, []).append(r)
        results: dict[str, str | RelayError] = {}

        async def one(dest: str, group: list[R]) -> None:
            fwd = part(group)
            try:
                if dest == self._node_id:
                    await store_local(fwd)
                    results[dest] = "stored"
                else:
                    results[dest] = await self.forward(dest, fwd)
            except KNOWN_REFUSALS as exc:
                results[dest] = relay_error_from(exc)  # type: ignore[assignment]

        async with trio.open_nursery() as nursery:
            for dest, group in parts.items():
                nursery.start_soon(one, dest, group)
        for dest in parts:
            if isinstance(results[dest], RelayError):
                raise results[dest]
        return "queued" if "queued" in results.values() else "stored"

    async def check_local(
        self, sender_user: str, sender_device: int, members: list[tuple[str, list[int]]]
    ) -> None:
        """Check one home's part before anything of it is written.

        Args:
            sender_user, sender_device: the sending device (it needs no copy).
            members: ``(user_id, device_ids)`` per recipient user.

        Raises:
            RelayError: ``bad_request`` (malformed, not homed here, a user twice),
                ``unknown_user``, ``stale_devices`` (after ``on_stale`` recorded
                the sender's user as a watcher of that user's list).
        """
        seen: set[str] = set()
        for user_id, device_ids in members:
            self._directory.check_user_id(user_id)
            if user_id in seen:
                raise RelayError(ErrorCode.BAD_REQUEST, "a user appears twice in recipients")
            seen.add(user_id)
            if not self._directory.is_home(user_id):
                raise RelayError(ErrorCode.BAD_REQUEST, "recipient is not homed at this node",
                                 user_id=user_id)
            try:
                await self._directory.check_devices(user_id, device_ids,
                                                    (sender_user, sender_device))
            except RelayError as exc:
                if exc.code is ErrorCode.STALE_DEVICES and self._on_stale is not None:
                    await self._on_stale(user_id, sender_user)
                raise

    async def enqueue_local(
        self, items: list[tuple[str, int, bytes]], sender_user: str, msg_id: bytes
    ) -> None:
        """Durably enqueue one message's envelopes ``(user_id, device_id, envelope)``
        in one atomic call deduplicated by ``(sender_user, msg_id)``, then wake
        the devices' pushers (not when the message was already stored).

        Raises:
            StorageFull, QueueFull: nothing stored.
        """
        if not items:
            return
        seqs = await self._storage.enqueue(
            items, dedupe=dedupe_id(sender_user, msg_id), max_queue=self._max_queue,
        )
        if seqs is not None:
            for user_id, device_id, _ in items:
                self._notify(user_id, device_id)

    def check_from_peer(self, sender_user: str, peer_id: str) -> None:
        """Raise ``bad_request`` unless ``sender_user`` is well-formed and homed at
        ``peer_id`` (a peer may only forward what its own users sent)."""
        self._directory.check_homed_at(sender_user, peer_id, "sender")

    async def forward(self, dest: str, fwd: Forward | GroupForward) -> str:
        """Hand ``fwd`` to node ``dest``: over the peer link, else (link down or slow,
        or older entries pending for ``dest``) to the durable outbox.

        Returns:
            ``"stored"`` (``dest`` answered ``ok``) or ``"queued"`` (in the outbox).

        Raises:
            RelayError: ``dest``'s refusal. StorageFull: the outbox is full.
        """
        if self._outbox.has_pending(dest):
            await self._outbox.put(fwd, dest)
            return "queued"
        try:
            answer = await request_within(self._federation, dest, fwd, self.forward_timeout)
        except LinkDown:
            await self._outbox.put(fwd, dest)
            return "queued"
        if isinstance(answer, Ok):
            return "stored"
        if isinstance(answer, Error):
            raise RelayError.from_frame(answer)
        raise RelayError(ErrorCode.INTERNAL, f"unexpected answer {answer.TYPE!r} from {dest}")
