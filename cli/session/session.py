"""One authenticated device session on its home node: the layer every feature builds on.

A :class:`Session` owns the device's :class:`~cli.session.state.State` and one
:class:`~cli.session.connection.Connection`, and offers what all features share:
the key directory (own device list, one-time keys, fetching and caching verified
device lists), and :meth:`Session.request_encrypted`, the one way ciphertexts leave
(send order + durable state before the frame). Features (:mod:`cli.features`) take a
``Session``; none imports the client facade (:mod:`cli.client`), which is a
``Session`` with the features' methods added.

Usage::

    with open_state(home) as state:
        async with open_session(state) as session:
            devices = await session.device_list(bob_user_id)
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import TypeVar

import trio

from cli.errors import ClientError, NoAnswer, RelayError, SendUnknown
from cli.session import crypto, listfresh, prekeys
from cli.session.connection import CLIENT_SETTINGS, Connection, open_connection
from cli.session.sendorder import SendOrder
from cli.session.state import State
from cli.session.taskgroups import unwrap_single
from relay.net import LinkSettings
from relay.protocol import DeviceList, ErrorCode
from relay.protocol.frames import ClaimedKey, ClaimKeys, Frame, GetDevices, PutDevices, UploadKeys

__all__ = ["Session", "open_session"]

log = logging.getLogger(__name__)

S = TypeVar("S", bound="Session")


class Session:
    """An authenticated device session on its home node. Create with :func:`open_session`.

    Methods may be called from several tasks at once.

    Attributes:
        state: the device state (owned by the caller; saved by the methods that change it).
        sessions_lock: held while Olm sessions are being created for a send
            (:func:`cli.features.outbound.encrypt_for`), so two sends never claim keys
            for the same device at once.
        commit_hook: if set, called when :meth:`request_encrypted` begins: from there the
            request may reach the relay, so a front end stops treating Ctrl-C as
            "nothing happened" (``wa-cli send``).
    """

    commit_hook: Callable[[], None] | None = None

    def __init__(self, state: State, conn: Connection) -> None:
        self.state = state
        self._conn = conn
        self._keys_lock = trio.Lock()
        self.sessions_lock = trio.Lock()
        self._send_order = SendOrder()
        self._low_send, self._low_recv = trio.open_memory_channel(1)
        # (user_id, device_id) -> monotonic times of retry requests sent (cli.features.retry)
        self.retries_sent: dict[tuple[str, int], list[float]] = {}
        conn.on_key_count = self._on_key_count

    @property
    def url(self) -> str:
        """The home node URL this session is connected to."""
        return self._conn.url

    @property
    def node_id(self) -> str:
        """The home node's id."""
        return self._conn.node_id

    @property
    def connection(self) -> Connection:
        """The underlying :class:`cli.session.connection.Connection`."""
        return self._conn

    @property
    def otk_count(self) -> int:
        """One-time keys the home node holds for this device, as last reported."""
        return self._conn.otk_count

    def open_fresh(self: S, *, connect_timeout: float = 10.0) -> AbstractAsyncContextManager[S]:
        """Another session of the same state (and class) over a new connection: for a step
        that must not depend on this session's connection, which may be dead."""
        return open_session(self.state, connect_timeout=connect_timeout, factory=type(self))

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
        key when the current one was used or is old (:func:`cli.session.prekeys.needs_rotation`).
        Every key is signed by the device key (:func:`cli.session.prekeys.signed_keys`).

        Private halves are saved before the public halves leave. Returns the node's new count.

        Raises:
            RelayError, ConnectionLost.
        """
        async with self._keys_lock:
            state = self.state
            ident = state.identity
            # the node's count, bounded: a hostile relay's negative count must not have
            # this device generate keys for hours (vodozemac's generation is CPU-bound)
            held = min(max(self._conn.otk_count, 0), crypto.ONE_TIME_KEYS_TARGET)
            need = crypto.ONE_TIME_KEYS_TARGET - held - len(ident.unpublished_one_time_keys())
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

    async def get_devices(self, user_id: str) -> DeviceList:
        """Fetch, verify (account signature, version never goes back) and cache a device list.

        Raises:
            RelayError: ``unknown_user``, ``unavailable`` (home unreachable), ...
            cli.session.state.DeviceListRejected: forged or rolled-back list.
        """
        answer = await self._conn.request(GetDevices, user_id=user_id)
        return self.state.remember_device_list(answer.device_list, user_id)

    async def claim_keys(self, user_id: str, device_ids: list[int]) -> list[ClaimedKey]:
        """Claim one one-time key (else the fallback key) per listed device of ``user_id``."""
        answer = await self._conn.request(ClaimKeys, user_id=user_id, device_ids=device_ids)
        return answer.keys

    async def device_list(self, user_id: str, *, fresh: bool = False) -> DeviceList:
        """The verified device list of ``user_id`` to encrypt for: the cached one, or (if
        none is cached, ``fresh``, or the cached one is expired or older than a version
        seen since, :func:`cli.session.listfresh.is_stale`) fetched with :meth:`get_devices`.

        Args:
            fresh: fetch even if a list is cached; the cached one is still returned when
                the user's home is unreachable (``unavailable``) and it is not stale.

        Raises:
            RelayError: ``unknown_user``; ``unavailable`` with nothing usable cached; ...
            cli.session.state.DeviceListRejected: the served list is forged, rolled back
                (below the cached version or a version seen in a message) or expired:
                nothing is encrypted to an older list.
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

    # ---------------------------------------------------------------- sending

    async def request_encrypted(self, frame_cls: type[Frame], **fields) -> Frame:
        """Send a request carrying ciphertexts encrypted just before: call it with no
        ``await`` since the encryption (:func:`cli.features.outbound.encrypt_for`,
        :func:`cli.session.groups.encrypt`).

        It takes the next place in this session's send order at once, makes the state
        durable (:meth:`cli.session.state.State.asave`, a group commit shared with concurrent
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
        if self.commit_hook is not None:
            self.commit_hook()
        place = self._send_order.take()
        try:
            await self.state.asave()  # advanced ratchets are durable before anything leaves
            return await self._conn.request(frame_cls, place=(self._send_order, place),
                                            **fields)
        except NoAnswer as exc:  # it left: delivered or not, only a retry can tell
            raise SendUnknown(fields["msg_id"], str(exc)) from exc
        finally:
            self._send_order.done(place)


@asynccontextmanager
async def open_session(state: State, *, connect_timeout: float = 10.0,
                       settings: LinkSettings = CLIENT_SETTINGS,
                       factory: Callable[[State, Connection], S] = Session) -> AsyncIterator[S]:
    """Connect to the device's home (following ``moved``), authenticate, top up one-time
    keys if the node holds fewer than 50, and yield ``factory(state, connection)``.

    The connection closes on exit. A single exception from the body or the
    background tasks is re-raised as itself (not wrapped in an exception group).

    Args:
        state: an open device state (:func:`cli.session.state.open_state`).
        connect_timeout: seconds for each connection attempt and handshake step.
        settings: keepalive and request deadline (:func:`cli.session.connection.client_settings`).
        factory: the :class:`Session` class (or subclass, e.g. :class:`cli.client.Client`).

    Raises:
        ConnectionFailed, RelayError: see :func:`cli.session.connection.open_connection`.
        ConnectionLost: the connection closed while the body was waiting on it.
    """
    with unwrap_single():
        async with trio.open_nursery() as nursery:
            try:
                async with open_connection(nursery, state, connect_timeout=connect_timeout,
                                           settings=settings) as conn:
                    session = factory(state, conn)
                    nursery.start_soon(session._top_up_keys)
                    if (conn.otk_count < crypto.ONE_TIME_KEYS_LOW
                            or prekeys.needs_rotation(state.fallback, time.time())):
                        await session.upload_keys()
                    yield session
            finally:
                nursery.cancel_scope.cancel()
