"""Async client API of one device (trio, over relay.net's connection layer), used by ``wa-cli``, tests and bench.

Usage::

    with open_state(home) as state:
        async with open_client(state) as client:
            result = await client.send_text(bob_user_id, "hi")     # SendResult
            async for event in client.receive():                  # Message | BacklogDone | ...
                ...

Sending encrypts one Olm copy per device of the recipient (from its verified,
account-signed device list, cached in the state) and per own other device,
claims one-time keys for devices without a session, saves the state (advanced
ratchets) *before* the ``send`` leaves, and re-encrypts after ``stale_devices``
(at most :data:`MAX_SEND_ROUNDS` attempts, same ``msg_id``). Receiving sends
``sync``, decrypts each delivered envelope, drops duplicates by
``(sender, msg_id)``, saves the state and only then acknowledges (decrypt ->
save -> ack), so a crash never loses or double-shows a message.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio

from relay.net import LinkSettings
from relay.protocol import DeviceList, ErrorCode
from relay.protocol.frames import (
    ClaimedKey,
    ClaimKeys,
    Frame,
    GetDevices,
    PutDevices,
    Recipient,
    Send,
    UploadKeys,
)

from . import crypto, devices, linkcode, listfresh, outbound, payload, prekeys, retry
from .connection import CLIENT_SETTINGS, Connection, open_connection
from .devices import ApprovedDevice, Confirm, DeviceOffer, init_account
from .errors import ClientError, NoAnswer, RelayError, SendFailed, SendUnknown
from .events import BacklogDone, Bounce, DevicesChanged, Dropped, Event, Message, SendResult
from .receiving import Receiver
from .sendorder import SendOrder
from .state import State
from .taskgroups import unwrap_single

__all__ = [
    "ApprovedDevice", "BacklogDone", "Bounce", "Client", "DeviceOffer", "DevicesChanged",
    "Dropped", "Event", "Message", "Receiver", "SendResult", "init_account", "now_ms",
    "open_client",
]

log = logging.getLogger(__name__)

MAX_SEND_ROUNDS = 3
LIST_CHECK_INTERVAL = 6 * 3600.0  # seconds between expiry checks of the own list (primary)


def now_ms() -> int:
    """Milliseconds since the Unix epoch."""
    return int(time.time() * 1000)


class Client:
    """An authenticated device session on its home node. Create with :func:`open_client`.

    Methods may be called from several tasks at once; one :meth:`receive` at a time.
    """

    def __init__(self, state: State, conn: Connection) -> None:
        self.state = state
        self._conn = conn
        self._keys_lock = trio.Lock()
        self._sessions_lock = trio.Lock()
        self._send_order = SendOrder()
        self._low_send, self._low_recv = trio.open_memory_channel(1)
        # (user_id, device_id) -> monotonic times of retry requests sent (cli.retry)
        self.retries_sent: dict[tuple[str, int], list[float]] = {}
        self._receiver: Receiver | None = None
        conn.on_key_count = self._on_key_count

    @property
    def url(self) -> str:
        """The home node URL this client is connected to."""
        return self._conn.url

    @property
    def node_id(self) -> str:
        """The home node's id."""
        return self._conn.node_id

    def open_fresh(self, *, connect_timeout: float = 10.0):  # noqa: ANN201 (async CM)
        """Another client of the same state over a new connection (:func:`open_client`,
        without finishing pending withdrawals): for a step that must not depend on
        this client's connection, which may be dead."""
        return open_client(self.state, connect_timeout=connect_timeout, withdraw_pending=False)

    @property
    def connection(self) -> Connection:
        """The underlying :class:`cli.connection.Connection`."""
        return self._conn

    @property
    def otk_count(self) -> int:
        """One-time keys the home node holds for this device, as last reported."""
        return self._conn.otk_count

    # ------------------------------------------------------------ key directory

    async def publish_device_list(self) -> None:
        """Store this account's own signed device list on the home (``put_devices``).

        Raises:
            RelayError: refused (``stale_version`` is treated as already published).
            ConnectionLost: the connection closed.
        """
        own = self.state.device_lists[self.state.user_id]
        try:
            await self._conn.request(PutDevices, device_list=own.signed)
        except RelayError as exc:
            if exc.code != ErrorCode.STALE_VERSION:
                raise
        self.state.published_version = own.parsed.version
        await self.state.asave()

    async def upload_keys(self) -> int:
        """Top the device's one-time keys on the node up to 100, and upload a new fallback
        key when the current one was used or is old (:func:`cli.prekeys.needs_rotation`).
        Every key is signed by the device key (:func:`cli.prekeys.signed_keys`).

        Private halves are saved before the public halves leave. Returns the node's new count.

        Raises:
            RelayError, ConnectionLost.
        """
        async with self._keys_lock:
            state = self.state
            ident = state.identity
            need = (crypto.ONE_TIME_KEYS_TARGET - self._conn.otk_count
                    - len(ident.unpublished_one_time_keys()))
            ident.generate_one_time_keys(need)
            now = time.time()
            fallback = ident.unpublished_fallback_key()
            if fallback is None and prekeys.needs_rotation(state.fallback, now):
                ident.generate_fallback_key()  # the previous private half stays until the next
                fallback = ident.unpublished_fallback_key()
            if fallback is not None and fallback.key != state.fallback.key:
                state.fallback = prekeys.FallbackInfo(fallback.key, now, False)
            keys = ident.unpublished_one_time_keys()
            if not keys and fallback is None:
                return self._conn.otk_count
            keys = prekeys.signed_keys(ident, state.user_id, state.device_id, keys)
            if fallback is not None:
                [fallback] = prekeys.signed_keys(ident, state.user_id, state.device_id, [fallback])
            await self.state.asave()
            try:
                answer = await self._conn.request(UploadKeys, one_time_keys=keys, fallback_key=fallback)
            except RelayError as exc:
                if exc.code != ErrorCode.BAD_REQUEST:
                    raise
                log.warning("node refused the key upload (%s); assuming an earlier upload landed", exc)
            else:
                self._conn.otk_count = answer.otk_count
            ident.mark_keys_as_published()
            await self.state.asave()
            return self._conn.otk_count

    def _on_key_count(self, count: int) -> None:
        self._conn.otk_count = count
        if count < crypto.ONE_TIME_KEYS_LOW:
            self.schedule_key_upload()

    def schedule_key_upload(self) -> None:
        """Have the background task run :meth:`upload_keys` soon (one-time keys low, or
        the fallback key was used)."""
        try:
            self._low_send.send_nowait(self._conn.otk_count)
        except trio.WouldBlock:
            pass  # an upload is already scheduled

    async def _top_up_keys(self) -> None:
        async for _ in self._low_recv:
            try:
                await self.upload_keys()
            except ClientError as exc:
                log.warning("one-time key top-up failed: %s", exc)

    async def _keep_list_fresh(self) -> None:
        """Primary only: re-sign the account's list before it expires while running."""
        while True:
            await trio.sleep(LIST_CHECK_INTERVAL)
            await devices.refresh_own_list(self)

    async def get_devices(self, user_id: str) -> DeviceList:
        """Fetch, verify (account signature, version never goes back) and cache a device list.

        Raises:
            RelayError: ``unknown_user``, ``unavailable`` (home unreachable), ...
            cli.state.DeviceListRejected: forged or rolled-back list.
        """
        answer = await self._conn.request(GetDevices, user_id=user_id)
        return self.state.remember_device_list(answer.device_list, user_id)

    async def claim_keys(self, user_id: str, device_ids: list[int]) -> list[ClaimedKey]:
        """Claim one one-time key (else the fallback key) per listed device of ``user_id``."""
        answer = await self._conn.request(ClaimKeys, user_id=user_id, device_ids=device_ids)
        return answer.keys

    # ---------------------------------------------------------------- sending

    async def send_text(self, user_id: str, text: str) -> SendResult:
        """Encrypt ``text`` for every device of ``user_id`` (and own other devices) and send it.

        Returns:
            ``SendResult(msg_id, status, to=user_id)``.

        Raises:
            ValueError: ``text`` longer than ``payload.MAX_TEXT`` characters.
            SendFailed: no usable devices/keys, or the device list kept changing.
            RelayError: the relay refused (``unknown_user``, ``queue_full``, ...).
            cli.state.DeviceListRejected, ConnectionLost.
        """
        if len(text) > payload.MAX_TEXT:
            raise ValueError(f"text is longer than {payload.MAX_TEXT} characters")
        msg_id = os.urandom(16)
        p = payload.TextPayload(msg_id, text, now_ms(), self.state.name, user_id)
        self.state.history.append({
            "id": msg_id.hex(), "direction": "out", "peer": user_id, "from": self.state.user_id,
            "from_device": self.state.device_id, "ts": p.ts, "type": "text", "text": text,
            "from_name": self.state.name, "resends": 0,
        })
        status = await self.send_payload(user_id, msg_id, p.encode())
        return SendResult(msg_id, status, user_id)

    async def device_list(self, user_id: str, *, fresh: bool = False) -> DeviceList:
        """The verified device list of ``user_id`` to encrypt for: the cached one, or (if
        none is cached, ``fresh``, or the cached one is expired or older than a version
        seen since, :func:`cli.listfresh.is_stale`) fetched with :meth:`get_devices`.

        Args:
            fresh: fetch even if a list is cached; the cached one is still returned when
                the user's home is unreachable (``unavailable``) and it is not stale.

        Raises:
            RelayError: ``unknown_user``; ``unavailable`` with nothing usable cached; ...
            cli.state.DeviceListRejected: the served list is forged, rolled back (below
                the cached version or a version seen in a message) or expired: nothing
                is encrypted to an older list.
            ConnectionLost.
        """
        cached = self.state.device_lists.get(user_id)
        stale = cached is not None and listfresh.is_stale(
            cached.parsed, self.state.highest_list.get(user_id, 0), time.time())
        if cached is not None and not fresh and not stale:
            return cached.parsed
        try:
            return await self.get_devices(user_id)
        except RelayError as exc:
            if exc.code == ErrorCode.UNAVAILABLE and cached is not None and not stale:
                log.info("home of %s unreachable; using its cached device list", user_id[:8])
                return cached.parsed
            raise

    async def encrypt(self, lists: dict[str, DeviceList], plaintext: bytes) -> list[Recipient]:
        """Olm-encrypt ``plaintext`` once for every device in ``lists`` except this one.

        First makes sure a session exists with each device (claiming one-time keys,
        retrying for about 3 s while a just-linked device has none); then encrypts
        every copy with no ``await`` in between, advancing each session's ratchet.
        Send the result with :meth:`request_encrypted` *right away* (no ``await``
        before it) so that ciphertexts leave in encryption order and only after the
        advanced ratchets are durable.

        Args:
            lists: user_id -> that user's verified device list (see :meth:`device_list`).
            plaintext: the encoded payload (:mod:`cli.payload`) or control message.

        Returns:
            One ``Recipient(user_id, devices_version, copies)`` per user that has a
            device other than this one (may be empty); ``copies[i].body`` is the Olm
            message (:func:`cli.crypto.encrypt`) for ``copies[i].device_id``.

        A device with no one-time or fallback key to claim (e.g. a link that did not
        complete) gets a withheld copy (:data:`cli.outbound.WITHHELD`) and a warning
        naming it (logged), so that it does not stop the message for the others.

        Raises:
            SendFailed: no device of a recipient has keys to claim.
            RelayError, ConnectionLost: claiming keys failed.
        """
        return await outbound.encrypt_for(self, lists, plaintext, self._sessions_lock)

    async def request_encrypted(self, frame_cls: type[Frame], **fields) -> Frame:
        """Send a request carrying ciphertexts encrypted just before: call it with no
        ``await`` since the encryption (:meth:`encrypt`, :func:`cli.groups.encrypt`).

        It takes the next place in this client's send order at once, makes the state
        durable (:meth:`cli.state.State.asave`, a group commit shared with concurrent
        sends), writes the frame once every earlier place has been written or given
        up (so each device gets its copies in ratchet order), then waits for the answer.

        Args:
            frame_cls, fields: the request (``Send``, ``GroupSend``), without ``id``.

        Returns:
            The answer frame.

        Raises:
            RelayError: the relay refused (e.g. ``stale_devices``).
            SendUnknown: the frame left but no answer came (connection lost, keepalive
                overdue, deadline): retry with the same ``msg_id``.
            ConnectionLost: the connection closed before the frame left.
            OSError: the state could not be saved (nothing was sent).
        """
        place = self._send_order.take()
        try:
            await self.state.asave()  # advanced ratchets are durable before anything leaves
            return await self._conn.request(frame_cls, place=(self._send_order, place),
                                            **fields)
        except NoAnswer as exc:  # it left: delivered or not, only a retry can tell
            raise SendUnknown(fields["msg_id"], str(exc)) from exc
        finally:
            self._send_order.done(place)

    async def send_payload(
        self, user_id: str, msg_id: bytes, plaintext: bytes, *, fresh: bool = False
    ) -> str:
        """Encrypt an encoded payload for ``user_id``'s devices and own other devices; send it.

        Used by :meth:`send_text` and to resend a bounced message under its original id.

        Args:
            fresh: fetch ``user_id``'s device list instead of using the cached one
                (the cached one is still used if the home is unreachable).

        Returns:
            ``"stored"`` or ``"queued"``.

        Raises:
            SendFailed, RelayError, DeviceListRejected, ConnectionLost: as :meth:`send_text`.
            OSError: the state could not be saved.
        """
        targets = [user_id] if user_id == self.state.user_id else [user_id, self.state.user_id]
        lists = {uid: await self.device_list(uid, fresh=fresh and uid == user_id)
                 for uid in targets}
        for _ in range(MAX_SEND_ROUNDS):
            recipients = await self.encrypt(lists, plaintext)
            if not recipients:
                raise SendFailed("no devices to send to")
            retry.note_addressed(self, msg_id, retry.addressed(recipients))
            try:
                answer = await self.request_encrypted(Send, msg_id=msg_id, recipients=recipients)
            except RelayError as exc:
                frame = exc.frame
                if (exc.code != ErrorCode.STALE_DEVICES or frame.device_list is None
                        or frame.user_id not in lists):
                    raise
                old = lists[frame.user_id].version
                new = self.state.remember_device_list(frame.device_list, frame.user_id)
                if new.version <= old:
                    raise SendFailed(f"relay says the device list of {frame.user_id} is stale but "
                                     f"served version {new.version} (have {old})") from exc
                lists[frame.user_id] = new
                continue
            return answer.status
        raise SendFailed(f"the device list of {user_id} kept changing; gave up after "
                         f"{MAX_SEND_ROUNDS} attempts")

    # ------------------------------------------------------------ own devices

    async def approve_link(
        self, code: str | linkcode.LinkCode, *, confirm: Confirm | None = None, history: bool = True,
        history_limit: int = linkcode.HISTORY_DEFAULT,
    ) -> ApprovedDevice:
        """Add the device behind a linking code to this account (primary only).

        See :func:`cli.devices.approve_link` (arguments, order of steps, errors).
        """
        return await devices.approve_link(self, code, confirm=confirm, history=history,
                                          history_limit=history_limit)

    async def remove_device(self, device_id: int) -> DeviceList:
        """Publish the account's list without ``device_id`` (primary only); returns the new list.

        See :func:`cli.devices.remove_device`.
        """
        return await devices.remove_device(self, device_id)

    # -------------------------------------------------------------- receiving

    def receive(self, *, keep: bool = False) -> Receiver:
        """Start delivery (``sync``); iterate the returned :class:`Receiver` for events.

        Yields :class:`Message`, :class:`BacklogDone` (once, after the backlog),
        :class:`Bounce`, :class:`Dropped`, :class:`DevicesChanged` (a contact's or this
        account's verified new device list), ``GroupChanged``. Each delivered
        envelope is processed, the state saved, then acknowledged, before its event is
        yielded. Runs until the connection closes (then raises ``ConnectionLost``).

        Args:
            keep: keep the events to show in ``state.inbox`` (:mod:`cli.inbox`), durable
                before the ack, and yield one ``cli.events.Kept`` per batch instead of them
                (``wa-cli recv`` shows them from there, exactly once).

        A connection syncs once: a later call returns the same receiver, resumed
        (:meth:`cli.receiving.Receiver.resume`; e.g. after :func:`cli.catchup.catch_up`).
        """
        if self._receiver is None:
            self._receiver = Receiver(self, keep=keep)
        else:
            self._receiver.resume(keep=keep)
        return self._receiver

    @property
    def receiving(self) -> bool:
        """Whether a task is waiting on this client's receiver right now."""
        return self._receiver is not None and self._receiver.active


@asynccontextmanager
async def open_client(state: State, *, connect_timeout: float = 10.0,
                      withdraw_pending: bool = True,
                      settings: LinkSettings = CLIENT_SETTINGS) -> AsyncIterator[Client]:
    """Connect to the device's home (following ``moved``), authenticate, top up one-time
    keys if the node holds fewer than 50, and yield a :class:`Client`.

    On a primary whose state records devices whose linking did not complete
    (``state.pending_withdrawals``, see :mod:`cli.devices`), they are withdrawn from
    the account's list first (:func:`cli.devices.finish_pending_withdrawals`), unless
    ``withdraw_pending`` is false.

    The connection closes on exit. A single exception from the body or the
    background tasks is re-raised as itself (not wrapped in an exception group).

    Args:
        state: an open device state (:func:`cli.state.open_state`).
        connect_timeout: seconds for each connection attempt and handshake step.
        settings: keepalive and request deadline (:func:`cli.connection.client_settings`).

    Raises:
        ConnectionFailed, RelayError: see :func:`cli.connection.open_connection`.
        ConnectionLost: the connection closed while the body was waiting on it.
    """
    with unwrap_single():
        async with trio.open_nursery() as nursery:
            try:
                async with open_connection(nursery, state, connect_timeout=connect_timeout,
                                           settings=settings) as conn:
                    client = Client(state, conn)
                    nursery.start_soon(client._top_up_keys)
                    if (conn.otk_count < crypto.ONE_TIME_KEYS_LOW
                            or prekeys.needs_rotation(state.fallback, time.time())):
                        await client.upload_keys()
                    if (withdraw_pending and state.pending_withdrawals
                            and state.account_key is not None):
                        await devices.finish_pending_withdrawals(client)
                    if state.account_key is not None:
                        await devices.refresh_own_list(client)
                        nursery.start_soon(client._keep_list_fresh)
                    yield client
            finally:
                nursery.cancel_scope.cancel()
