"""Retry a message whose answer never came (:class:`cli.errors.SendUnknown`) under its
original message id: ``wa-cli send --retry MSG_ID``.

The sent message is in local history (saved before its frame left). It is rebuilt from
there (:func:`cli.payload.from_history`), encrypted again for the recipient's current
devices (pairwise, or once with the group's sender key) and sent with the *same*
``msg_id``. If the first attempt was delivered after all, the recipient's home stores
the id only once (its queues are deduplicated by sender and message id) and devices
show it once (they drop ids already seen); if it was not, this delivers it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from cli.errors import ClientError
from cli.features import group_messaging, payload, sending

if TYPE_CHECKING:
    from cli.session.session import Session

__all__ = ["ResendError", "resend"]


class ResendError(ClientError):
    """The message id is not a message this device sent (unknown here, received, or sent
    by another device), or its history entry cannot be rebuilt."""


async def resend(client: Session, msg_id: bytes) -> tuple[str, dict]:
    """Send again the message ``msg_id`` that this device sent.

    Returns:
        ``(status, entry)``: ``"stored"`` or ``"queued"``, and its history entry
        (``peer``: the user id, or the group id in hex when ``group_id`` is set).

    Raises:
        ResendError: see the class.
        SendUnknown: again no answer (retry later, same id).
        SendFailed, RelayError, DeviceListRejected, ConnectionLost: as a first send.
    """
    state = client.state
    entry = state.find_history(msg_id.hex())
    if (entry is None or entry.get("direction") != "out" or entry.get("from") != state.user_id
            or entry.get("from_device") != state.device_id):
        raise ResendError(f"no message with id {msg_id.hex()} was sent from this device")
    try:
        p = payload.from_history(msg_id, entry)
    except payload.PayloadError as exc:
        raise ResendError(f"message {msg_id.hex()} cannot be rebuilt: {exc}") from exc
    if entry.get("group_id"):
        status = await group_messaging.send_group_payload(
            client, bytes.fromhex(entry["group_id"]), msg_id, p.encode())
    else:
        status = await sending.send_payload(client, entry["peer"], msg_id, p.encode())
    return status, entry
