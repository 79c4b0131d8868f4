"""Resending a message only to the devices it was addressed to, and end-to-end retry
requests (issue 10, findings 5 and 6).

A relay's ``bounce`` is not authenticated end to end, and re-encrypting a stored
plaintext for the recipient's *current* devices (or the group's current members)
would hand history to a device or member that joined later. So:

* every sent message records in its history entry the exact ``(user_id,
  device_id)`` set it was encrypted for (``to_devices``, :func:`note_addressed`);
* a resend goes only to devices of that set that are still in their account's
  list (:func:`resend_to`); every other listed device gets a withheld copy
  (:data:`cli.outbound.WITHHELD`), so nothing is encrypted for a new device;
* a resend happens only when (a) a device of that set asks for it with a
  *retry request* sent end to end (:func:`request_retry`, like Signal's
  decryption-error message), or (b) the sender's own home bounced the message
  from its own attempt (bounce ``origin: "home"``, :func:`handle_bounce`); a
  bounce another node relayed (``origin: "peer"``) is shown and nothing is sent.

Payloads over Olm (beside :mod:`cli.payload` and the group control payloads):

* ``retry {v, type, msg_id, ts, about}``: "I could not decrypt ``about``".
  Sent on a fresh Olm session (a newly claimed one-time key), so a broken
  session is re-established by the answer; at most one per ``(sender, about)``
  and :data:`RETRY_BUDGET` per sender device and hour.
* ``resend {v, type, msg_id, ts, about, payload, group_id?}``: the original
  encoded payload (its ``msg_id`` is ``about``) under a new envelope id (the
  recipient's home has the original id already). A group message is resent
  this way too, pairwise, never with the group's current sender key. The
  receiver shows it once (deduplicated by ``about``).
"""

from __future__ import annotations

import logging
import os
import time
from typing import TYPE_CHECKING

import msgpack

from cli.errors import ClientError, PartialSend, RelayError
from cli.events import Bounce, Dropped, Message
from cli.features import payload
from cli.features.outbound import WITHHELD, ensure_sessions, has_session
from cli.session import crypto, prekeys
from cli.session.state import DeviceListRejected, State, seen_key
from relay.protocol import DeviceList, ErrorCode
from relay.protocol.codec import refuse_ext
from relay.protocol.frames import Copy, Envelope, Recipient, Send
from relay.protocol.stored import BOUNCE_FROM_HOME, decode_bounce

if TYPE_CHECKING:
    from cli.session.session import Session

__all__ = ["MAX_RESENDS", "RESEND", "RETRY", "RETRY_BUDGET", "addressed", "handle_bounce",
           "note_addressed", "note_partial", "on_retry_request", "open_resend", "original_devices",
           "request_retry", "resend_to", "send_to_devices", "wrapper_type"]

log = logging.getLogger(__name__)

RETRY = "retry"
RESEND = "resend"
MAX_RESENDS = 3
"""Resends of one message (all causes together)."""
RETRY_BUDGET = 5
"""Retry requests sent to one device per :data:`RETRY_WINDOW`."""
RETRY_WINDOW = 3600.0
NO_RESEND = {"unknown_user", "unauthorized", "bad_request", "bad_frame", "too_large"}
MAX_ROUNDS = 3

Addressed = set[tuple[str, int]]


def _control(kind: str, **fields) -> tuple[bytes, bytes]:
    msg_id = os.urandom(16)
    return msg_id, msgpack.packb({"v": payload.VERSION, "type": kind, "msg_id": msg_id,
                                  "ts": int(time.time() * 1000), **fields}, use_bin_type=True)


def wrapper_type(plaintext: bytes) -> str | None:
    """``"retry"`` or ``"resend"`` if ``plaintext`` is such a payload, else ``None``."""
    try:
        m = msgpack.unpackb(plaintext, raw=False, strict_map_key=True, ext_hook=refuse_ext,
                            max_map_len=16)
    except (ValueError, msgpack.UnpackException):
        return None
    kind = m.get("type") if isinstance(m, dict) else None
    return kind if kind in (RETRY, RESEND) else None


def note_addressed(client: Session, msg_id: bytes, devices: Addressed) -> None:
    """Record in ``msg_id``'s history entry the devices it is encrypted for (call before
    the frame leaves; the state is saved with it)."""
    entry = client.state.find_history(msg_id.hex())
    if entry is not None:
        entry["to_devices"] = sorted([u, d] for u, d in devices)
        client.state.history_changed(entry)


def note_partial(client: Session, msg_id: bytes, exc: RelayError) -> None:
    """Keep, in the history entry of ``msg_id``, the users whose homes refused it while
    the others' stored it (``exc.frame.refused_users``: ``send --retry`` sends it to
    them only), then raise. For a 1:1 send the refused user can only be this account
    (the copies for its other devices; the recipient's home stored it).

    Raises:
        PartialSend: always.
    """
    state = client.state
    refused = list(exc.frame.refused_users or ())
    entry = state.find_history(msg_id.hex())
    if entry is not None:
        entry["refused_users"] = refused
        state.history_changed(entry)
    names = ["your other devices" if u == state.user_id else state.alias_of(u) or u
             for u in refused]
    raise PartialSend(exc.frame, msg_id, names) from exc


def addressed(recipients: list[Recipient]) -> Addressed:
    """The devices of a ``send`` that got a real (not withheld) copy."""
    return {(r.user_id, c.device_id) for r in recipients for c in r.copies if c.body != WITHHELD}


def original_devices(entry: dict) -> Addressed:
    return {(u, d) for u, d in entry.get("to_devices", [])}


async def _new_sessions(client: Session, user_id: str, devices: list) -> None:
    """Start a new outbound Olm session with each device (a freshly claimed, signed key);
    it becomes the newest, so the next copy is a pre-key message. Older sessions stay
    (they may still decrypt what is queued)."""
    state = client.state
    claimed = {k.device_id: k for k in await client.claim_keys(
        user_id, [d.device_id for d in devices])}
    for d in devices:
        key = claimed.get(d.device_id)
        if key is not None and prekeys.check_claimed(user_id, d, key):
            state.add_session(user_id, d.device_id, d.curve25519,
                              state.identity.create_outbound_session(d.curve25519, key.key))


async def send_to_devices(client: Session, wanted: Addressed, msg_id: bytes, plaintext: bytes,
                   *, fresh_session: bool = False) -> str | None:
    """Olm-encrypt ``plaintext`` for the ``wanted`` devices only (withheld copies for the
    other listed devices of their users) and send it as ``msg_id``; ``None`` if no
    wanted device is listed any more.

    Raises:
        SendFailed, RelayError, DeviceListRejected, ConnectionLost.
    """
    state = client.state
    users = sorted({u for u, _ in wanted})
    lists: dict[str, DeviceList] = {u: await client.device_list(u) for u in users}
    for _ in range(MAX_ROUNDS):
        targets = {u: [d for d in lists[u].devices if (u, d.device_id) in wanted
                       and (u, d.device_id) != (state.user_id, state.device_id)] for u in users}
        if not any(targets.values()):
            return None
        for u, devs in targets.items():
            if fresh_session:
                await _new_sessions(client, u, devs)
            await ensure_sessions(client, u, devs, client.sessions_lock)
        recipients = [
            Recipient(user_id=u, devices_version=lists[u].version, copies=[
                Copy(device_id=d.device_id,
                     body=(crypto.encrypt(state.sessions[(u, d.device_id)].sessions[0], plaintext)
                           if d in targets[u] and has_session(state, u, d) else WITHHELD))
                for d in lists[u].devices if (u, d.device_id) != (state.user_id, state.device_id)])
            for u in users]
        try:
            answer = await client.request_encrypted(Send, msg_id=msg_id, recipients=recipients)
        except RelayError as exc:
            frame = exc.frame
            if (exc.code != ErrorCode.STALE_DEVICES or frame.device_list is None
                    or frame.user_id not in lists):
                raise
            lists[frame.user_id] = state.remember_device_list(frame.device_list, frame.user_id)
            continue
        return answer.status
    return None


async def resend_to(client: Session, entry: dict, wanted: Addressed,
                    also: Addressed = frozenset()) -> str | None:
    """Send message ``entry`` (sent by this device) again, to the devices of ``wanted``
    that it was first addressed to (``to_devices``), and to ``also`` (devices shown to
    have been listed when it was sent, :func:`_listed_when_sent`), those still listed,
    as a ``resend`` payload under a new envelope id.

    Returns:
        The send status, or ``None`` if there was no such device.

    Raises:
        payload.PayloadError: the history entry cannot be rebuilt.
        SendFailed, RelayError, DeviceListRejected, ConnectionLost.
    """
    devices = (wanted & original_devices(entry)) | also
    if not devices:
        return None
    about = bytes.fromhex(entry["id"])
    inner = payload.from_history(about, entry).encode()
    extra = {"group_id": bytes.fromhex(entry["group_id"])} if entry.get("group_id") else {}
    msg_id, plaintext = _control(RESEND, about=about, payload=inner, **extra)
    entry["resends"] = entry.get("resends", 0) + 1
    client.state.history_changed(entry)
    return await send_to_devices(client, devices, msg_id, plaintext)


async def handle_bounce(client: Session, env: Envelope) -> Bounce:
    """Report a bounce; resend to the original devices of the bounced user only when the
    bounce comes from this account's own home (``origin: "home"``)."""
    try:
        code, message, user_id, origin = decode_bounce(env.body)
    except ValueError:
        code = message = user_id = origin = ""  # shown as a bounce, nothing resent
    state = client.state
    entry = state.find_history(env.msg_id.hex())
    if origin != BOUNCE_FROM_HOME:
        log.warning("bounce of %s relayed by another node: shown, nothing resent",
                    env.msg_id.hex()[:8])
        return Bounce(env.msg_id, user_id, code,
                      f"{message} (relayed by another node: not resent)".lstrip())
    if (entry is None or entry.get("direction") != "out" or code in NO_RESEND
            or entry.get("from") != state.user_id or entry.get("from_device") != state.device_id
            or entry.get("resends", 0) >= MAX_RESENDS):
        return Bounce(env.msg_id, user_id, code, message)
    wanted = {(u, d) for u, d in original_devices(entry) if u == user_id}
    also: Addressed = set()
    if code == ErrorCode.STALE_DEVICES.value and not entry.get("group_id"):
        also = await _listed_when_sent(client, user_id, entry)
    try:
        status = await resend_to(client, entry, wanted, also)
    except (ClientError, payload.PayloadError) as exc:
        return Bounce(env.msg_id, user_id, code, message, error=str(exc))
    if status is None:
        return Bounce(env.msg_id, user_id, code, message,
                      error="none of the devices it was sent to is listed any more")
    return Bounce(env.msg_id, user_id, code, message, resent_status=status)


async def _listed_when_sent(client: Session, user_id: str, entry: dict) -> Addressed:
    """Devices of ``user_id`` that were listed when the message was sent, though this
    device's copy of the list was older then (the home refused the copy as
    ``stale_devices``): every device of the current list, if that list was surely
    issued before the message (``issued_at``, whole seconds, + 1 <= its ``ts``); else
    none. A device added
    after the message still gets nothing (issue 10, finding 5). The list is signed by
    the account key, so a relay cannot add a device to it; clocks of the two accounts'
    devices are assumed to agree within the time between linking and sending."""
    try:
        current = await client.device_list(user_id, fresh=True)
    except (ClientError, DeviceListRejected) as exc:
        log.info("could not read the current device list of %s: %s", user_id[:8], exc)
        return set()
    if current.issued_at + 1 > entry.get("ts", 0) / 1000:  # issued_at: whole seconds
        return set()
    return {(user_id, d.device_id) for d in current.devices}


def _shown(state: State, sender_user: str, msg_id: bytes) -> bool:
    """Whether ``msg_id`` from ``sender_user`` is in the history already. Dedupe keys
    cover only the last ``SEEN_LIMIT`` ids: a node that replays an envelope older than
    that (it fails to decrypt, its Olm key is spent) would otherwise get a retry
    request sent, and the sender's resend shown a second time (tests/cli/test_cli_replay.py)."""
    entry = state.find_history(msg_id.hex())
    return entry is not None and entry.get("from") == sender_user


async def request_retry(client: Session, sender_user: str, sender_device: int,
                        about: bytes) -> bool:
    """Ask ``(sender_user, sender_device)`` end to end to resend ``about``, which this
    device could not decrypt, over a fresh Olm session. Failures are logged.

    Returns:
        Whether a request was sent (not for a repeat, over budget, or a failure).
    """
    state = client.state
    if sender_user == state.user_id and sender_device == state.device_id:
        return False
    if _shown(state, sender_user, about):
        log.warning("not asking %s/%d to resend %s: shown already (a replayed envelope?)",
                    sender_user[:8], sender_device, about.hex()[:8])
        return False
    if not state.mark_seen(seen_key(sender_user, b"retry\0" + about)):
        return False  # asked already
    now = time.monotonic()
    sent = [t for t in client.retries_sent.get((sender_user, sender_device), [])
            if now - t < RETRY_WINDOW]
    if len(sent) >= RETRY_BUDGET:
        log.warning("not asking %s/%d to resend %s: %d retry requests this hour",
                    sender_user[:8], sender_device, about.hex()[:8], len(sent))
        return False
    client.retries_sent[(sender_user, sender_device)] = [*sent, now]
    msg_id, plaintext = _control(RETRY, about=about)
    try:
        status = await send_to_devices(client, {(sender_user, sender_device)}, msg_id, plaintext,
                                fresh_session=True)
    except ClientError as exc:
        log.warning("could not ask %s/%d to resend %s: %s", sender_user[:8], sender_device,
                    about.hex()[:8], exc)
        return False
    log.info("asked %s/%d to resend %s (%s)", sender_user[:8], sender_device,
             about.hex()[:8], status)
    return status is not None


async def on_retry_request(client: Session, sender_user: str, sender_device: int,
                           m: dict) -> None:
    """Answer a decrypted ``retry`` payload: resend the message to that device if this
    device sent it to that very device (and within :data:`MAX_RESENDS`); the next
    group message re-shares this device's sender key with it. Failures are logged."""
    about = m.get("about")
    state = client.state
    entry = state.find_history(about.hex()) if isinstance(about, bytes) else None
    if (entry is None or entry.get("from") != state.user_id
            or entry.get("from_device") != state.device_id
            or entry.get("resends", 0) >= MAX_RESENDS
            or (sender_user, sender_device) not in original_devices(entry)):
        log.warning("ignoring a retry request from %s/%d for a message not sent to it",
                    sender_user[:8], sender_device)
        return
    if entry.get("group_id"):
        out = state.groups.outbound.get(bytes.fromhex(entry["group_id"]))
        if out is not None:
            out.shared = {s for s in out.shared if (s[0], s[1]) != (sender_user, sender_device)}
    try:
        status = await resend_to(client, entry, {(sender_user, sender_device)})
    except (ClientError, payload.PayloadError) as exc:
        log.warning("could not resend %s to %s/%d: %s", about.hex()[:8], sender_user[:8],
                    sender_device, exc)
        return
    log.info("resent %s to %s/%d on its request (%s)", about.hex()[:8], sender_user[:8],
             sender_device, status)


def open_resend(client: Session, env: Envelope, m: dict) -> Message | Dropped | None:
    """Show a decrypted ``resend`` payload as the message it carries (``None``: already
    shown). A group message must name a group this account is in, from a member."""
    def dropped(reason: str) -> Dropped:
        log.warning("dropping resent message from %s/%d: %s", env.sender_user[:8],
                    env.sender_device, reason)
        return Dropped(env.msg_id, env.sender_user, env.sender_device, reason)

    state = client.state
    about, inner, group_id = m.get("about"), m.get("payload"), m.get("group_id")
    if not (isinstance(about, bytes) and isinstance(inner, bytes)):
        return dropped("malformed resend")
    try:
        p = payload.decode(inner)
    except payload.PayloadError as exc:
        return dropped(str(exc))
    if p.msg_id != about:
        return dropped("the resent message's id differs from the one it names")
    key = seen_key(env.sender_user, about)
    if key in state.seen or _shown(state, env.sender_user, about):
        return None
    own = env.sender_user == state.user_id
    group = hex_id = None
    if group_id is not None:
        record = state.groups.groups.get(group_id) if isinstance(group_id, bytes) else None
        if record is None or env.sender_user not in record.state.members \
                or state.user_id not in record.state.members:
            return dropped("resent group message of a group the sender or this account is not in")
        group, hex_id = record.state.name, record.state.hex_id
    state.mark_seen(key)
    peer = hex_id or (p.to if own else env.sender_user)
    state.history.append({
        "id": about.hex(), "direction": "out" if own else "in", "peer": peer,
        **({"group_id": hex_id} if hex_id else {}),
        "from": env.sender_user, "from_device": env.sender_device, "ts": p.ts,
        "from_name": p.from_name, "resends": 0, **payload.history_fields(p),
    })
    alias = None if own else state.alias_of(env.sender_user)
    return Message(about, env.sender_user, env.sender_device, "out" if own else "in", peer,
                   p.ts, p.type, p.text, alias or p.from_name, p.from_name, group=group,
                   group_id=hex_id)
