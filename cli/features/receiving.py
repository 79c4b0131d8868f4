"""Receiving: the :class:`Receiver` stream of :meth:`cli.client.Client.receive`.

Per delivered envelope: look up the sender device in its account-signed device
list (fetching it if unknown), decrypt with Olm (existing sessions first),
check the payload (the msg_id inside the ciphertext must equal the
envelope's), drop duplicates by ``(sender, msg_id)``, record history. A batch
of envelopes is processed, then the state is saved, then the highest ``seq``
acknowledged, and only then are the events yielded (decrypt -> save -> ack).
With ``keep=True`` the events to show are kept in the state's inbox
(:mod:`cli.inbox`) instead, so they are durable before the ack: a caller killed
after the ack still finds them there, and yields one :class:`Kept` per batch.
``bounce`` envelopes are reported and, when the original is in local
history, re-encrypted against a fresh device list and resent with the same id.
``device_list`` envelopes (a contact's new signed list) are verified and cached
(:func:`cli.devices.device_list_notice`) and reported as ``DevicesChanged``.
"""

from __future__ import annotations

import logging
from collections import deque
from typing import TYPE_CHECKING

import msgpack
import trio

from cli.errors import ClientError, ConnectionLost, RelayError
from cli.events import BacklogDone, Bounce, Dropped, Event, Kept, Message
from cli.features import effects, group_messaging, group_receiving, payload, receipts, sending
from cli.features.devices import device_list_notice
from cli.features.outbound import WITHHELD
from cli.session import crypto
from cli.session.inbox import KEPT_TYPES
from cli.session.state import DeviceListRejected, seen_key
from relay.protocol import ErrorCode
from relay.protocol.frames import Ack, Deliver, Envelope, Error, Sync, Synced
from relay.protocol.identity import Device

if TYPE_CHECKING:
    from cli.session.session import Session

log = logging.getLogger(__name__)

MAX_RESENDS = 3
RECEIVE_BATCH = 256
STEP_TIMEOUT = 30.0  # bound on network work done while processing one delivered envelope
NO_RESEND = {"unknown_user", "unauthorized", "bad_request", "bad_frame", "too_large"}


async def _sender_device(client: Session, user_id: str, device_id: int) -> Device | None:
    cached = client.state.device_lists.get(user_id)
    if cached is not None and cached.parsed.device(device_id) is not None:
        return cached.parsed.device(device_id)
    try:
        dl = await client.get_devices(user_id)
    except RelayError as exc:
        if exc.code == ErrorCode.UNKNOWN_USER:
            return None
        raise
    except DeviceListRejected as exc:  # forged or rolled back: the copy cannot be authenticated
        log.warning("%s", exc)
        return None
    return dl.device(device_id)


async def open_envelope(client: Session, env: Envelope) -> Event | None:
    """Authenticate, decrypt, dedupe and record one delivered envelope (state not saved).

    Returns:
        The event to show, or ``None`` for a duplicate.

    Raises:
        ClientError: a network step failed (the envelope must not be acknowledged).
    """
    if env.kind == "bounce":
        return await handle_bounce(client, env)
    if env.kind == "device_list":
        try:
            return device_list_notice(client, env.sender_user, env.body)
        except DeviceListRejected as exc:
            log.warning("dropping a device-list notice: %s", exc)
            return Dropped(env.msg_id, env.sender_user, env.sender_device, str(exc))
    if env.kind == "group":  # one Megolm body for the whole group (cli.group_receiving)
        return await group_receiving.open_group_envelope(client, env)

    def dropped(reason: str) -> Dropped:
        log.warning("dropping message %s from %s/%d: %s",
                    env.msg_id.hex()[:8], env.sender_user[:8], env.sender_device, reason)
        return Dropped(env.msg_id, env.sender_user, env.sender_device, reason)

    if env.kind != "olm":
        return dropped(f"unknown envelope kind {env.kind!r}")
    if env.body == WITHHELD:
        return dropped("withheld: the sender had no keys for this device when it sent it")
    key = seen_key(env.sender_user, env.msg_id)
    if key in client.state.seen:
        return None
    device = await _sender_device(client, env.sender_user, env.sender_device)
    if device is None:
        return dropped("the sender device is not in its account-signed device list")
    ss = client.state.session_set(env.sender_user, env.sender_device)
    sessions = ss.sessions if ss is not None and ss.identity_key == device.curve25519 else []
    try:
        plaintext, session, _ = crypto.decrypt(
            client.state.identity, sessions, device.curve25519, env.body)
    except crypto.DecryptError as exc:
        return dropped(str(exc))
    client.state.add_session(env.sender_user, env.sender_device, device.curve25519, session)
    client.state.saw_device(env.sender_user, env.sender_device, env.ts)
    if group_receiving.control_type(plaintext) is not None:  # group state or sender key
        return group_receiving.on_control(client, env.sender_user, env.sender_device,
                                          env.msg_id, plaintext)
    try:
        p = payload.decode(plaintext)
    except payload.PayloadError as exc:
        return dropped(str(exc))
    if p.msg_id != env.msg_id:
        return dropped("the msg_id inside the ciphertext differs from the envelope's")
    client.state.mark_seen(key)
    own = env.sender_user == client.state.user_id
    return effects.on_payload(client.state, env.sender_user, env.sender_device, p,
                              peer=p.to if own else env.sender_user)


async def handle_bounce(client: Session, env: Envelope) -> Bounce:
    """Report a bounce; re-encrypt and resend the original if it is in local history."""
    try:
        info = msgpack.unpackb(env.body, raw=False, max_ext_len=0, max_map_len=16)
    except (ValueError, msgpack.UnpackException):
        info = None
    info = info if isinstance(info, dict) else {}
    code, message = str(info.get("code", "")), str(info.get("message", ""))
    user_id = str(info.get("user_id", ""))
    entry = client.state.find_history(env.msg_id.hex())
    if (entry is None or entry["direction"] != "out" or code in NO_RESEND
            or entry.get("resends", 0) >= MAX_RESENDS or entry["from"] != client.state.user_id):
        return Bounce(env.msg_id, user_id, code, message)
    entry["resends"] = entry.get("resends", 0) + 1
    client.state.history_changed(entry)
    try:
        p = payload.from_history(env.msg_id, entry)
    except payload.PayloadError as exc:
        return Bounce(env.msg_id, user_id, code, message, error=str(exc))
    try:
        if entry.get("group_id"):  # a group message: one Megolm body again, same msg_id
            status = await group_messaging.send_group_payload(
                client, bytes.fromhex(entry["group_id"]), env.msg_id, p.encode())
        else:
            status = await sending.send_payload(client, entry["peer"], env.msg_id, p.encode(),
                                                fresh=True)
    except ClientError as exc:
        return Bounce(env.msg_id, user_id, code, message, error=str(exc))
    return Bounce(env.msg_id, user_id, code, message, resent_status=status)


class Receiver:
    """Async iterator over a client's incoming :data:`Event` s (see :meth:`cli.client.Client.receive`).

    Args:
        client: the connected client.
        keep: put the events to show (:data:`cli.inbox.KEPT_TYPES`) into
            ``client.state.inbox`` before the batch is saved and acknowledged, and
            yield a :class:`Kept` marker per batch instead of them.
    """

    def __init__(self, client: Session, *, keep: bool = False) -> None:
        self._client = client
        self._keep = keep
        self._ready: deque[Event] = deque()
        self._error: Exception | None = None
        self._started = False
        self._delivered: dict[str, list[bytes]] = {}  # author -> msg ids to send receipts for

    def __aiter__(self) -> Receiver:
        return self

    async def __anext__(self) -> Event:
        conn = self._client.connection
        if not self._started:
            self._started = True
            await conn.send(Sync, stream=True)
        while not self._ready:
            if self._error is not None:
                raise self._error
            try:
                batch = [await conn.pushes.receive()]
            except (trio.EndOfChannel, trio.ClosedResourceError):
                raise conn.lost() from None
            while len(batch) < RECEIVE_BATCH:
                try:
                    batch.append(conn.pushes.receive_nowait())
                except (trio.WouldBlock, trio.EndOfChannel):
                    break
            # Shielded: once envelopes are taken from the channel they are processed,
            # saved and acknowledged as a unit, so cancelling a caller's wait (e.g.
            # move_on_after around anext) never leaves state saved but events unshown.
            with trio.CancelScope(shield=True):
                await self._process(batch)
            if self._delivered:  # after the ack, outside the shield: best effort
                due, self._delivered = self._delivered, {}
                if self._client.state.prefs.receipts:
                    with trio.move_on_after(STEP_TIMEOUT):
                        await receipts.send_delivered(self._client, due)
        return self._ready.popleft()

    async def _process(self, batch: list) -> None:
        client = self._client
        last_seq = None
        opened = False
        kept = 0
        for frame in batch:
            if isinstance(frame, Deliver):
                for item in frame.items:  # one frame may carry several envelopes
                    try:
                        with trio.fail_after(STEP_TIMEOUT):
                            event = await open_envelope(client, item.envelope)
                    except ClientError as exc:  # e.g. sender's home unavailable: retry on next sync
                        self._error = exc
                        break
                    except trio.TooSlowError:
                        self._error = ClientError(
                            "the relay did not answer while processing a message")
                        break
                    opened = True
                    if not item.seq:  # ephemeral (typing): never kept, never acknowledged
                        if event is not None:
                            self._ready.append(event)
                        continue
                    last_seq = item.seq
                    if (isinstance(event, Message) and event.direction == "in"
                            and event.type in ("text", "file")):
                        self._delivered.setdefault(event.sender_user, []).append(event.msg_id)
                    if event is not None and self._keep and isinstance(event, KEPT_TYPES):
                        client.state.inbox.keep(event)
                        kept += 1
                    elif event is not None:
                        self._ready.append(event)
                if self._error is not None:
                    break
            elif isinstance(frame, Synced):
                self._ready.append(BacklogDone())
            elif isinstance(frame, Error):
                self._error = RelayError(frame)
                break
        if opened and last_seq is None:  # only ephemeral items: their ratchets are saved
            await client.state.asave()
        if last_seq is not None:
            await client.state.asave()
            if kept:
                self._ready.appendleft(Kept(kept))
            with trio.move_on_after(STEP_TIMEOUT):  # an ack lost here means a redelivery, deduped
                try:
                    await client.connection.send(Ack, seq=last_seq)
                except ConnectionLost as exc:
                    self._error = exc
