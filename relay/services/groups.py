"""Group fan-out: one sender-key ciphertext queued for every listed member device.

A ``group_send {msg_id, body, recipients: [{user_id, devices_version, device_ids}]}``
carries a single Megolm ciphertext (opaque here) and the member devices that
get it. The sender's home routes it exactly like a ``send``
(:meth:`relay.services.router.Router.send_batch`): split by home node into
``group_forward`` parts; a part for users homed here is checked per member
against the member's current signed device list (the sender's own user without
the sending device; ``stale_devices`` with that user and the list on a
mismatch) and written as one ``group`` envelope per device queue, atomically,
deduplicated by ``(sender_user, msg_id)`` (the same dedupe id as a ``send``);
parts for other homes travel in ``forward_batch`` frames or the outbox, like
``send`` parts, in the same order lanes.

Fan-out cost on a home is one storage request per message whatever the number
of devices; each device queue holds its own copy of the envelope.
"""

from __future__ import annotations

from relay.protocol.frames import Envelope, GroupForward
from relay.protocol.stored import encode_envelope

GROUP_KIND = "group"
"""Envelope kind of a fanned-out group message (body: one Megolm ciphertext)."""


def group_members(part: GroupForward) -> list[tuple[str, list[int]]]:
    """``(user_id, device_ids)`` per member user of a group part."""
    return [(r.user_id, r.device_ids) for r in part.recipients]


def group_items(part: GroupForward) -> list[tuple[str, int, bytes]]:
    """The stored envelopes of a group part: the same ``group`` envelope for every device."""
    env = encode_envelope(Envelope(
        msg_id=part.msg_id, sender_user=part.sender_user, sender_device=part.sender_device,
        ts=part.ts, kind=GROUP_KIND, body=part.body,
    ))
    return [(r.user_id, d, env) for r in part.recipients for d in r.device_ids]
