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
``bounce`` envelopes are reported; a message is resent only to the devices it was
first addressed to, and only on a bounce from this account's own home or on an
end-to-end retry request from such a device (:mod:`cli.features.retry`). A copy that does
not decrypt (Olm or Megolm) makes this device ask its sender for a resend, over
a fresh Olm session.
``device_list`` envelopes (a contact's new signed list) are verified and cached
(:func:`cli.devices.device_list_notice`) and reported as ``DevicesChanged``.
"""

from __future__ import annotations

import logging
from collections import deque
from typing import TYPE_CHECKING

import msgpack
import trio

from cli.errors import ClientError, ConnectionLost, NotOpenedYet, RelayError
from cli.events import BacklogDone, Bounce, Dropped, Event, Kept, Message
from cli.features import effects, group_receiving, payload, receipts, retry
from cli.features.devices import device_list_notice
from cli.features.outbound import WITHHELD
from cli.session import crypto, listfresh, prekeys
from cli.session.inbox import KEPT_TYPES
from cli.session.state import DeviceListRejected, seen_key
from relay.protocol import ErrorCode
from relay.protocol.codec import refuse_ext
from relay.protocol.frames import Ack, Deliver, Envelope, Error, Sync, Synced
from relay.protocol.identity import Device

if TYPE_CHECKING:
    from cli.session.session import Session

log = logging.getLogger(__name__)

RECEIVE_BATCH = 256
STEP_TIMEOUT = 30.0  # bound on network work done while processing one delivered envelope
GROUP_UNDECRYPTABLE = ("no group session key", "group message does not decrypt")


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
        event = await group_receiving.open_group_envelope(client, env)
        if isinstance(event, Dropped) and event.reason.startswith(GROUP_UNDECRYPTABLE):
            await retry.request_retry(client, env.sender_user, env.sender_device, env.msg_id)
        return event

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
        plaintext, session, is_new = crypto.decrypt(
            client.state.identity, sessions, device.curve25519, env.body)
    except crypto.DecryptError as exc:
        await retry.request_retry(client, env.sender_user, env.sender_device, env.msg_id)
        return dropped(str(exc))
    if is_new and prekeys.prekey_one_time_key(env.body) == client.state.fallback.key:
        client.state.fallback.used = True  # rotated by the next key upload
        client.schedule_key_upload()
    client.state.add_session(env.sender_user, env.sender_device, device.curve25519, session)
    client.state.saw_device(env.sender_user, env.sender_device, env.ts)
    hint = listfresh.read_hint(plaintext)
    held = client.state.device_lists.get(env.sender_user)
    if hint is not None and listfresh.note_hint(client.state.highest_list,
                                                held.parsed if held else None,
                                                env.sender_user, hint):
        log.info("a message from %s/%d says its device list is at version %d (have %d); "
                 "it is fetched again before the next message to it", env.sender_user[:8],
                 env.sender_device, hint, held.parsed.version if held else 0)
    wrapped = retry.wrapper_type(plaintext)
    if wrapped is not None:  # an end-to-end retry request, or a message resent on one
        m = msgpack.unpackb(plaintext, raw=False, strict_map_key=True, ext_hook=refuse_ext,
                            max_map_len=16)
        if m.get("msg_id") != env.msg_id:
            return dropped("the msg_id inside the ciphertext differs from the envelope's")
        client.state.mark_seen(key)
        if wrapped == retry.RETRY:
            await retry.on_retry_request(client, env.sender_user, env.sender_device, m)
            return None
        return retry.open_resend(client, env, m)
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
    """Report a bounce; resend only as :func:`cli.features.retry.handle_bounce` allows."""
    return await retry.handle_bounce(client, env)


class Receiver:
    """Async iterator over a client's incoming :data:`Event` s (see :meth:`cli.client.Client.receive`).

    Args:
        client: the connected client.
        keep: put the events to show (:data:`cli.inbox.KEPT_TYPES`) into
            ``client.state.inbox`` before the batch is saved and acknowledged, and
            yield a :class:`Kept` marker per batch instead of them. Without it, the
            events already in the inbox (kept by a catch-up before a group send,
            :mod:`cli.features.catchup`) are yielded first.
    """

    def __init__(self, client: Session, *, keep: bool = False) -> None:
        self._client = client
        self._keep = keep
        self._ready: deque[Event] = deque()
        self._error: Exception | None = None
        self._started = False
        self._backlog_done = False
        self.active = False  # a task is inside __anext__
        self._delivered: dict[str, list[bytes]] = {}  # author -> msg ids to send receipts for

    def resume(self, *, keep: bool) -> None:
        """Hand this (already started) receiver to a new reader (a connection syncs once).

        With ``keep=False`` the events a catch-up kept in the inbox
        (:func:`cli.features.catchup.catch_up`) are yielded first (and leave the inbox), then a
        :class:`BacklogDone` if the backlog was passed already; ``Kept`` markers meant
        for the catch-up are dropped.
        """
        self._keep = keep
        if keep:
            return
        self._ready = deque(e for e in self._ready if not isinstance(e, Kept | BacklogDone))
        self._take_inbox()
        if self._backlog_done:
            self._ready.append(BacklogDone())

    def _take_inbox(self) -> None:
        """``keep=False``: put the events kept in the inbox (by a catch-up) first in line;
        they leave the inbox (saved with the next batch)."""
        inbox = self._client.state.inbox
        pending = inbox.pending()
        for p in pending:
            inbox.showing(p.n)
            inbox.shown(p.n)
        self._ready.extendleft(reversed([p.event for p in pending]))

    @property
    def backlog_done(self) -> bool:
        """Whether the backlog marker was yielded already."""
        return self._backlog_done

    async def process_pushed(self) -> None:
        """Process the envelopes pushed so far, without waiting for more (a catch-up after
        the backlog was passed). Events go where :meth:`__anext__` would put them.

        Raises:
            ClientError: as :meth:`__anext__` (the error of an earlier batch, or the
                connection closed).
        """
        if self._error is not None:
            raise self._error
        batch: list = []
        while len(batch) < RECEIVE_BATCH:
            try:
                batch.append(self._client.connection.pushes.receive_nowait())
            except (trio.WouldBlock, trio.EndOfChannel):
                break
        if batch:
            with trio.CancelScope(shield=True):  # as in __anext__: a batch is one unit
                await self._process(batch)

    def __aiter__(self) -> Receiver:
        return self

    async def __anext__(self) -> Event:
        self.active = True
        try:
            event = await self._next()
        finally:
            self.active = False
        if isinstance(event, BacklogDone):
            self._backlog_done = True
        return event

    async def _next(self) -> Event:
        conn = self._client.connection
        if not self._started:
            self._started = True
            if not self._keep:
                self._take_inbox()
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
                    try:
                        with trio.move_on_after(STEP_TIMEOUT):
                            await receipts.send_delivered(self._client, due)
                    except trio.Cancelled:  # the caller stopped waiting: the next batch
                        for author, ids in due.items():  # sends them (repeats are harmless)
                            self._delivered.setdefault(author, [])[:0] = ids
                        raise
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
                    except RelayError as exc:  # e.g. the sender's home is unreachable
                        self._error = (NotOpenedYet(str(exc))
                                       if exc.code == ErrorCode.UNAVAILABLE else exc)
                        break
                    except ClientError as exc:  # retried on the next sync
                        self._error = exc
                        break
                    except trio.TooSlowError:
                        self._error = NotOpenedYet(
                            "the relay did not answer while it was being processed")
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
