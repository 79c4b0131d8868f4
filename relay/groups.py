"""Group fan-out: one sender-key ciphertext queued for every listed member device.

A ``group_send {msg_id, body, recipients: [{user_id, devices_version, device_ids}]}``
carries a single Megolm ciphertext (opaque here) and the member devices that
get it. The sender's home splits the recipients by home node, like a
``send`` (see :mod:`relay.router`), and handles every home concurrently:

* its own users: :meth:`GroupRouter.store_local` checks each member's device
  ids against the member's current signed device list (the sender's own user
  without the sending device), answering ``stale_devices`` with that user and
  the current list on a mismatch; then it writes one ``group`` envelope per
  device queue in one atomic, durable ``enqueue`` deduplicated by
  ``(sender_user, msg_id)`` (the same dedupe id as a ``send``);
* other homes: a ``group_forward`` over the peer link through
  :meth:`relay.router.Router.forward`, so the outbox (``sent queued`` while a
  home is down, FIFO behind older entries, bounces) is the one ``send`` uses.

All or nothing per home. The answer is ``stored`` when every home wrote its
part, ``queued`` when some part went to the outbox, else the first refusal.
Fan-out cost on a home is one storage transaction per message whatever the
number of devices; each device queue holds its own copy of the envelope.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

import trio

from relay.delivery import pack_envelope
from relay.directory import Directory
from relay.errors import KNOWN_REFUSALS, RelayError, relay_error_from
from relay.protocol import ErrorCode
from relay.protocol.frames import Copy, Envelope, GroupForward, GroupRecipient, Recipient
from relay.ring import Ring
from relay.router import Router, dedupe_id
from storage import Storage

GROUP_KIND = "group"
"""Envelope kind of a fanned-out group message (body: one Megolm ciphertext)."""


class GroupRouter:
    """Routes ``group_send`` requests and stores ``group_forward`` parts for local users.

    Args:
        node_id: this node's id.
        ring: the cluster ring.
        storage, directory: local state.
        router: the ``send`` router, whose :meth:`~relay.router.Router.forward`
            (peer link, else durable outbox) carries the remote parts.
        notify: ``notify(user_id, device_id)`` after envelopes were enqueued.
        max_queue: bound of one device queue.
        on_stale: ``await on_stale(user_id, sender_user)`` before a ``stale_devices``
            refusal hands ``user_id``'s list to ``sender_user`` (as for a ``send``).
    """

    def __init__(
        self, node_id: str, ring: Ring, storage: Storage, directory: Directory, router: Router,
        notify: Callable[[str, int], None], *, max_queue: int,
        on_stale: Callable[[str, str], Awaitable[None]] | None = None,
    ) -> None:
        self._node_id = node_id
        self._ring = ring
        self._storage = storage
        self._directory = directory
        self._router = router
        self._notify = notify
        self._max_queue = max_queue
        self._on_stale = on_stale

    async def store_local(self, fwd: GroupForward) -> None:
        """Check and durably enqueue a group part whose members are all homed here.

        Each member's ``device_ids`` must equal its current device list (for the
        sender's own user: without the sending device). A repeated
        ``(sender_user, msg_id)`` is acknowledged without writing again.

        Raises:
            RelayError: ``bad_request`` (not homed here, repeated user or device),
                ``unknown_user``, ``stale_devices`` (with ``user_id`` and the
                current signed list). Nothing is written then.
            StorageFull, QueueFull: nothing stored.
        """
        seen: set[str] = set()
        for r in fwd.recipients:
            self._directory.check_user_id(r.user_id)
            if r.user_id in seen:
                raise RelayError(ErrorCode.BAD_REQUEST, "a user appears twice in recipients")
            seen.add(r.user_id)
            if not self._directory.is_home(r.user_id):
                raise RelayError(ErrorCode.BAD_REQUEST, "recipient is not homed at this node",
                                 user_id=r.user_id)
            # The same exact-set check as a ``send`` (bodies do not matter to it).
            as_copies = Recipient(r.user_id, r.devices_version,
                                  [Copy(device_id=d, body=b"") for d in r.device_ids])
            try:
                await self._directory.check_recipient(as_copies,
                                                      (fwd.sender_user, fwd.sender_device))
            except RelayError as exc:
                if exc.code is ErrorCode.STALE_DEVICES and self._on_stale is not None:
                    await self._on_stale(r.user_id, fwd.sender_user)
                raise
        env = pack_envelope(Envelope(
            msg_id=fwd.msg_id, sender_user=fwd.sender_user, sender_device=fwd.sender_device,
            ts=fwd.ts, kind=GROUP_KIND, body=fwd.body,
        ))
        items = [(r.user_id, d, env) for r in fwd.recipients for d in r.device_ids]
        if not items:
            return
        seqs = await self._storage.enqueue(
            items, dedupe=dedupe_id(fwd.sender_user, fwd.msg_id), max_queue=self._max_queue,
        )
        if seqs is not None:
            for user_id, device_id, _ in items:
                self._notify(user_id, device_id)

    async def send(
        self, sender_user: str, sender_device: int, msg_id: bytes, body: bytes,
        recipients: list[GroupRecipient],
    ) -> str:
        """Fan one group message out; return ``"stored"`` or ``"queued"``.

        Args:
            sender_user, sender_device: the authenticated sending device.
            msg_id: 16 bytes chosen by the sender (dedupe id with ``sender_user``).
            body: the single ciphertext, queued for every listed device.
            recipients: the member devices, each user once.

        Raises:
            RelayError: ``bad_request`` (no recipients, malformed user id) or the
                first refusal of a home (in recipient order), e.g. ``stale_devices``.
            StorageFull, QueueFull: from the local store or the outbox.
        """
        if not recipients:
            raise RelayError(ErrorCode.BAD_REQUEST, "a group send needs at least one recipient")
        parts: dict[str, list[GroupRecipient]] = {}
        for r in recipients:
            self._directory.check_user_id(r.user_id)
            parts.setdefault(self._ring.home(r.user_id).id, []).append(r)
        ts = int(time.time() * 1000)
        results: dict[str, str | RelayError] = {}

        async def one(dest: str, part: list[GroupRecipient]) -> None:
            fwd = GroupForward(id=0, msg_id=msg_id, sender_user=sender_user,
                               sender_device=sender_device, ts=ts, body=body, recipients=part)
            try:
                if dest == self._node_id:
                    await self.store_local(fwd)
                    results[dest] = "stored"
                else:
                    results[dest] = await self._router.forward(dest, fwd)
            except KNOWN_REFUSALS as exc:
                results[dest] = relay_error_from(exc)  # type: ignore[assignment]

        async with trio.open_nursery() as nursery:
            for dest, part in parts.items():
                nursery.start_soon(one, dest, part)
        for dest in parts:
            if isinstance(results[dest], RelayError):
                raise results[dest]
        return "queued" if "queued" in results.values() else "stored"
