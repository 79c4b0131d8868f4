"""Retry a message whose answer never came (:class:`cli.errors.SendUnknown`) under its
original message id: ``wa-cli send --retry MSG_ID``.

The sent message is in local history (saved before its frame left, with the exact
devices it was encrypted for). It is rebuilt from there (:func:`cli.payload.from_history`)
and encrypted again only for those devices that are still listed (never for a device
or member added since, :mod:`cli.features.retry`): a 1:1 message under the *same* ``msg_id``
(if the first attempt was delivered after all, the recipient's home stores the id only
once and devices show it once), a group message pairwise as a ``resend`` payload
(never with the group's current sender key, which later members hold).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from cli.errors import ClientError
from cli.features import payload, retry

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
        ResendError: see the class; also when none of its devices is listed any more.
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
    wanted = retry.original_devices(entry)
    refused = entry.get("refused_users")
    if refused:  # a partial send: the other users' homes stored it already
        wanted = frozenset((u, d) for u, d in wanted if u in refused)
    if not wanted:
        raise ResendError(f"message {msg_id.hex()} does not record the devices it was sent "
                          "to; it is not resent")
    if entry.get("group_id"):
        status = await retry.resend_to(client, entry, wanted)
    else:
        status = await retry.send_to_devices(client, wanted, msg_id, p.encode())
    if status is None:
        raise ResendError(f"none of the devices message {msg_id.hex()} was sent to is "
                          "listed any more")
    if refused:
        del entry["refused_users"]
        state.history_changed(entry)
    return status, entry
