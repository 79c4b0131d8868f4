"""Group fan-out: one sender-key ciphertext queued for every listed member device.

A ``group_send {msg_id, body, recipients: [{user_id, devices_version, device_ids}]}``
carries a single Megolm ciphertext (opaque here) and the member devices that
get it. The sender's home splits the recipients by home node exactly like a
``send`` (:meth:`relay.router.Router.route`) and handles every home concurrently:

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

from relay.delivery import pack_envelope
from relay.errors import RelayError
from relay.protocol import ErrorCode
from relay.protocol.frames import Envelope, GroupForward, GroupRecipient
from relay.router import Router, now_ms

GROUP_KIND = "group"
"""Envelope kind of a fanned-out group message (body: one Megolm ciphertext)."""


class GroupRouter:
    """Routes ``group_send`` requests and stores ``group_forward`` parts for local users.

    Args:
        router: the ``send`` router, whose checks, local enqueue and
            :meth:`~relay.router.Router.forward` (peer link, else durable
            outbox) group sends share.
    """

    def __init__(self, router: Router) -> None:
        self._router = router

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
        await self._router.check_local(fwd.sender_user, fwd.sender_device,
                                       [(r.user_id, r.device_ids) for r in fwd.recipients])
        env = pack_envelope(Envelope(
            msg_id=fwd.msg_id, sender_user=fwd.sender_user, sender_device=fwd.sender_device,
            ts=fwd.ts, kind=GROUP_KIND, body=fwd.body,
        ))
        items = [(r.user_id, d, env) for r in fwd.recipients for d in r.device_ids]
        await self._router.enqueue_local(items, fwd.sender_user, fwd.msg_id)

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
        ts = now_ms()

        def part(group: list[GroupRecipient]) -> GroupForward:
            return GroupForward(id=0, msg_id=msg_id, sender_user=sender_user,
                                sender_device=sender_device, ts=ts, body=body, recipients=group)

        return await self._router.route(recipients, part, self.store_local)
