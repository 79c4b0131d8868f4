"""1:1 sending over a :class:`~cli.session.session.Session`: encrypt an encoded payload once
per device of the recipient and of this account's other devices, and send it, following
``stale_devices`` answers (at most :data:`MAX_SEND_ROUNDS` attempts, same ``msg_id``)."""

from __future__ import annotations

import os
import time

from cli.errors import RelayError, SendFailed
from cli.events import SendResult
from cli.features import outbound, payload, retry
from cli.session.session import Session
from relay.protocol import ErrorCode
from relay.protocol.frames import Send

__all__ = ["MAX_SEND_ROUNDS", "now_ms", "send_payload", "send_text"]

MAX_SEND_ROUNDS = 3


def now_ms() -> int:
    """Milliseconds since the Unix epoch."""
    return int(time.time() * 1000)


async def send_text(session: Session, user_id: str, text: str) -> SendResult:
    """Encrypt ``text`` for every device of ``user_id`` (and own other devices) and send it,
    recording it in the local history first.

    Returns:
        ``SendResult(msg_id, status, to=user_id)``.

    Raises:
        ValueError: ``text`` longer than ``payload.MAX_TEXT`` characters.
        SendFailed: no usable devices/keys, or the device list kept changing.
        RelayError: the relay refused (``unknown_user``, ``queue_full``, ...).
        cli.session.state.DeviceListRejected, ConnectionLost.
    """
    if len(text) > payload.MAX_TEXT:
        raise ValueError(f"text is longer than {payload.MAX_TEXT} characters")
    state = session.state
    msg_id = os.urandom(16)
    p = payload.TextPayload(msg_id, text, now_ms(), state.name, user_id)
    state.history.append({
        "id": msg_id.hex(), "direction": "out", "peer": user_id, "from": state.user_id,
        "from_device": state.device_id, "ts": p.ts, "type": "text", "text": text,
        "from_name": state.name, "resends": 0,
    })
    status = await send_payload(session, user_id, msg_id, p.encode())
    return SendResult(msg_id, status, user_id)


async def send_payload(session: Session, user_id: str, msg_id: bytes, plaintext: bytes, *,
                       fresh: bool = False) -> str:
    """Encrypt an encoded payload for ``user_id``'s devices and own other devices; send it.

    Used by :func:`send_text`. The devices it is encrypted for are recorded in the
    history entry of ``msg_id`` (:func:`cli.features.retry.note_addressed`): a resend
    goes to them only.

    Args:
        fresh: fetch ``user_id``'s device list instead of using the cached one
            (the cached one is still used if the home is unreachable).

    Returns:
        ``"stored"`` or ``"queued"``.

    Raises:
        SendFailed, RelayError, DeviceListRejected, ConnectionLost: as :func:`send_text`.
        SendUnknown: the request left but no answer came (retry with the same ``msg_id``).
        PartialSend: the recipient's home stored it, this node refused the copies for
            this account's other devices (recorded for ``send --retry``).
        OSError: the state could not be saved.
    """
    state = session.state
    targets = [user_id] if user_id == state.user_id else [user_id, state.user_id]
    lists = {uid: await session.device_list(uid, fresh=fresh and uid == user_id)
             for uid in targets}
    for _ in range(MAX_SEND_ROUNDS):
        recipients = await outbound.encrypt_for(session, lists, plaintext)
        if not recipients:
            raise SendFailed("no devices to send to")
        retry.note_addressed(session, msg_id, retry.addressed(recipients))
        try:
            answer = await session.request_encrypted(Send, msg_id=msg_id, recipients=recipients)
        except RelayError as exc:
            frame = exc.frame
            if frame.refused_users:  # stored for the recipient, not for own other devices
                retry.note_partial(session, msg_id, exc)
            if (exc.code != ErrorCode.STALE_DEVICES or frame.device_list is None
                    or frame.user_id not in lists):
                raise
            old = lists[frame.user_id].version
            new = state.remember_device_list(frame.device_list, frame.user_id)
            if new.version <= old:
                raise SendFailed(f"relay says the device list of {frame.user_id} is stale but "
                                 f"served version {new.version} (have {old})") from exc
            lists[frame.user_id] = new
            continue
        return answer.status
    raise SendFailed(f"the device list of {user_id} kept changing; gave up after "
                     f"{MAX_SEND_ROUNDS} attempts")
