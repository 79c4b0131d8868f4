"""The client facade of one device (trio, over relay.net's connection layer), used by
``wa-cli``'s commands, its daemon, tests and bench.

Usage::

    with open_state(home) as state:
        async with open_client(state) as client:
            result = await client.send_text(bob_user_id, "hi")     # SendResult
            async for event in client.receive():                  # Message | BacklogDone | ...
                ...

A :class:`Client` is a :class:`cli.session.session.Session` (connection, state, key
directory, ordered encrypted requests) with the features' entry points as methods;
the work is done in :mod:`cli.features`, which take a ``Session`` and never import
this module.

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

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import trio

from cli.events import BacklogDone, Bounce, DevicesChanged, Dropped, Event, Message, SendResult
from cli.features import devices, linkcode, outbound, outbox, sending
from cli.features.devices import ApprovedDevice, Confirm, DeviceOffer, init_account
from cli.features.receiving import Receiver
from cli.features.sending import MAX_SEND_ROUNDS, now_ms
from cli.session.connection import CLIENT_SETTINGS, Connection
from cli.session.session import Session, open_session
from cli.session.state import State
from cli.session.taskgroups import unwrap_single
from relay.net import LinkSettings
from relay.protocol import DeviceList
from relay.protocol.frames import Recipient

__all__ = [
    "MAX_SEND_ROUNDS", "ApprovedDevice", "BacklogDone", "Bounce", "Client", "DeviceOffer",
    "DevicesChanged", "Dropped", "Event", "Message", "Receiver", "SendResult", "init_account",
    "now_ms", "open_client",
]


class Client(Session):
    """An authenticated device session with the features as methods. Create with
    :func:`open_client`.

    Methods may be called from several tasks at once; one :meth:`receive` at a time.
    """

    async def send_text(self, user_id: str, text: str) -> SendResult:
        """Encrypt ``text`` for every device of ``user_id`` (and own other devices) and send it.

        See :func:`cli.features.sending.send_text` (returns, errors).
        """
        return await sending.send_text(self, user_id, text)

    async def send_payload(
        self, user_id: str, msg_id: bytes, plaintext: bytes, *, fresh: bool = False
    ) -> str:
        """Encrypt an encoded payload for ``user_id``'s devices and own other devices; send it.

        See :func:`cli.features.sending.send_payload`; returns ``"stored"`` or ``"queued"``.
        """
        return await sending.send_payload(self, user_id, msg_id, plaintext, fresh=fresh)

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
            plaintext: the encoded payload (:mod:`cli.features.payload`) or control message.

        Returns:
            One ``Recipient(user_id, devices_version, copies)`` per user that has a
            device other than this one (may be empty); ``copies[i].body`` is the Olm
            message (:func:`cli.session.crypto.encrypt`) for ``copies[i].device_id``.

        A device with no one-time or fallback key to claim (e.g. a link that did not
        complete) gets a withheld copy (:data:`cli.features.outbound.WITHHELD`) and a
        warning naming it (logged), so that it does not stop the message for the others.

        Raises:
            SendFailed: no device of a recipient has keys to claim.
            RelayError, ConnectionLost: claiming keys failed.
        """
        return await outbound.encrypt_for(self, lists, plaintext)

    # ------------------------------------------------------------ own devices

    async def approve_link(
        self, code: str | linkcode.LinkCode, *, confirm: Confirm | None = None, history: bool = True,
        history_limit: int = linkcode.HISTORY_DEFAULT, confirm_wait: float = devices.CONFIRM_WAIT,
        handed_over: Callable[[], None] | None = None,
    ) -> ApprovedDevice:
        """Add the device behind a linking code to this account (primary only); returns once
        the new device reached its home (it holds keys there).

        See :func:`cli.features.devices.approve_link` (arguments, order of steps, errors).
        """
        return await devices.approve_link(self, code, confirm=confirm, history=history,
                                          history_limit=history_limit, confirm_wait=confirm_wait,
                                          handed_over=handed_over)

    async def remove_device(self, device_id: int) -> DeviceList:
        """Publish the account's list without ``device_id`` (primary only); returns the new list.

        See :func:`cli.features.devices.remove_device`.
        """
        return await devices.remove_device(self, device_id)

    # -------------------------------------------------------------- receiving

    def __init__(self, state: State, conn: Connection) -> None:
        super().__init__(state, conn)
        self._receiver: Receiver | None = None

    @property
    def receiving(self) -> bool:
        """Whether a task is waiting on this client's receiver right now."""
        return self._receiver is not None and self._receiver.active

    def receive(self, *, keep: bool = False) -> Receiver:
        """Start delivery (``sync``); iterate the returned :class:`Receiver` for events.

        Yields :class:`Message`, :class:`BacklogDone` (once, after the backlog),
        :class:`Bounce`, :class:`Dropped`, :class:`DevicesChanged` (a contact's or this
        account's verified new device list), ``GroupChanged``. Each delivered
        envelope is processed, the state saved, then acknowledged, before its event is
        yielded. Runs until the connection closes (then raises ``ConnectionLost``).

        Args:
            keep: keep the events to show in ``state.inbox`` (:mod:`cli.session.inbox`),
                durable before the ack, and yield one ``cli.events.Kept`` per batch instead
                of them (``wa-cli recv`` shows them from there, exactly once).

        A connection syncs once: a later call returns the same receiver, resumed
        (:meth:`cli.features.receiving.Receiver.resume`; e.g. after
        :func:`cli.features.catchup.catch_up`).
        """
        if self._receiver is None:
            self._receiver = Receiver(self, keep=keep)
        else:
            self._receiver.resume(keep=keep)
        return self._receiver


@asynccontextmanager
async def open_client(state: State, *, connect_timeout: float = 10.0,
                      withdraw_pending: bool = True, flush_outbox: bool = True,
                      settings: LinkSettings = CLIENT_SETTINGS) -> AsyncIterator[Client]:
    """Connect to the device's home (following ``moved``), authenticate, top up one-time
    keys if the node holds fewer than 50, and yield a :class:`Client`
    (:func:`cli.session.session.open_session`).

    On a primary whose state records devices whose linking did not complete
    (``state.pending_withdrawals``, see :mod:`cli.features.devices`), they are withdrawn
    from the account's list first (:func:`cli.features.devices.finish_pending_withdrawals`),
    unless ``withdraw_pending`` is false. Then what waits in the local outbox is sent
    (:func:`cli.features.outbox.flush`), unless ``flush_outbox`` is false.

    The connection closes on exit. A single exception from the body or the
    background tasks is re-raised as itself (not wrapped in an exception group).

    Args:
        state: an open device state (:func:`cli.session.state.open_state`).
        connect_timeout: seconds for each connection attempt and handshake step.
        settings: keepalive and request deadline
            (:func:`cli.session.connection.client_settings`).

    Raises:
        ConnectionFailed, RelayError: see :func:`cli.session.connection.open_connection`.
        ConnectionLost: the connection closed while the body was waiting on it.
    """
    async with open_session(state, connect_timeout=connect_timeout, settings=settings,
                            factory=Client) as client:
        if withdraw_pending and state.pending_withdrawals and state.account_key is not None:
            await devices.finish_pending_withdrawals(client)
        if flush_outbox and state.outbox:
            await outbox.flush(client)
        if state.account_key is None:
            yield client
            return
        await devices.refresh_own_list(client)  # before the account's list can expire
        with unwrap_single():
            async with trio.open_nursery() as nursery:
                nursery.start_soon(devices.keep_own_list_fresh, client)
                try:
                    yield client
                finally:
                    nursery.cancel_scope.cancel()
