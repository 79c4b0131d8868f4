"""The per-connection handler of a node: devices (clients) and peer nodes.

Tasks of one connection, all in one nursery:

* the **reader** always drains the WebSocket into a bounded inbox
  (``INBOX_SIZE`` messages), so trio-websocket keeps answering pings/closes;
* the **handler** (this task) feeds each message to the sans-I/O
  :class:`~relay.protocol.connection.ServerConnection` and serves requests;
  a device's requests are answered one after the other, in order; a peer's
  (``forward``, ``get_devices``, ``claim_keys``, ``link_*``, ``notify``, ...)
  run concurrently, at most ``PEER_CONCURRENCY`` at a time, and are answered
  by id, possibly out of order;
* the **writer** is the only task that sends; everything goes through a
  bounded outbox (``OUTBOX_SIZE`` frames), which gives backpressure;
* after ``sync``, a :class:`~relay.delivery.Pusher` streams the device's queue.

A connection that opened a linking mailbox (``link_open``) owns it: the
mailbox goes when the connection ends or opens another (:mod:`relay.linking`);
if it expires unused, the connection gets ``error not_found`` (id 0).
A device removed from its list is *revoked*: it gets ``error unknown_device``
(id 0), nothing more is served, and the connection closes with 1008.

A connection that has not authenticated (or opened a linking mailbox) within
``handshake_timeout`` seconds gets ``error unauthorized`` (id 0) and close 1008;
a mailbox extends that by its lifetime. Connections are admitted (or refused)
by :mod:`relay.listener` before they get here.

Error handling: protocol problems answer ``error`` (closing when the error
carries a close code); refusals (:data:`relay.errors.KNOWN_REFUSALS`) answer
their code; any other exception is a bug, logged (metadata only) and answered
with ``error internal`` and close 1011. The node keeps serving the others.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from contextlib import ExitStack
from dataclasses import dataclass
from typing import TYPE_CHECKING

import trio
from trio_websocket import ConnectionClosed, WebSocketConnection

from relay import lookups
from relay.admission import HandshakeDeadline, Ticket
from relay.auth import check_device_auth, check_peer_auth
from relay.delivery import Pusher
from relay.errors import KNOWN_REFUSALS, RelayError, relay_error_from
from relay.linking import LinkSlot
from relay.protocol import (
    CloseCode,
    ErrorCode,
    RemoteProtocolError,
    write_frame,
)
from relay.protocol.connection import ConnState, ServerConnection
from relay.protocol.frames import (
    Ack,
    Auth,
    AuthOk,
    ClaimKeys,
    Error,
    Forward,
    Frame,
    GetDevices,
    GroupForward,
    GroupSend,
    Hello,
    KeyCount,
    LinkComplete,
    LinkFetch,
    LinkOpen,
    MediaDownload,
    MediaStatus,
    MediaUpload,
    Notify,
    Ok,
    PeerAuth,
    Ping,
    PutDevices,
    Send,
    Sent,
    Sync,
    UploadKeys,
)

if TYPE_CHECKING:
    from relay.node import Node

INBOX_SIZE = 16
OUTBOX_SIZE = 16
PEER_CONCURRENCY = 64
CLOSE_TIMEOUT = 5.0


@dataclass(frozen=True, slots=True)
class _Close:
    code: int
    reason: str


class Connection:
    """One accepted WebSocket (device or peer node) on ``node``.

    Implements :class:`relay.delivery.Session` for the device registry.
    """

    def __init__(self, node: Node, ws: WebSocketConnection, remote: str, ticket: Ticket) -> None:
        self._node = node
        self._ws = ws
        self._remote = remote
        self._ticket = ticket
        self._deadline = HandshakeDeadline(node.config.handshake_timeout)
        self._log: logging.Logger = node.log
        self._conn = ServerConnection(node.limits)  # peers: node.limits.for_peers()
        self._in_send, self._in_recv = trio.open_memory_channel[bytes | str](INBOX_SIZE)
        self._out_send, self._out_recv = trio.open_memory_channel[Frame | _Close](OUTBOX_SIZE)
        self._cancel = trio.CancelScope()
        self._pusher: Pusher | None = None
        self._peer_slots = trio.Semaphore(PEER_CONCURRENCY)
        self._exits = ExitStack()
        self._nursery: trio.Nursery | None = None
        self._link = LinkSlot(node.linking, self.push_nowait, self._send, ticket.key)
        self._exits.callback(self._link.close)
        self._revoked = False
        self._started = trio.current_time()
        self._ended: str | None = None  # why the connection ends (the first reason wins)

    # ----------------------------------------------------------------- Session

    def push_nowait(self, frame: Frame) -> bool:
        """Queue a push (e.g. ``key_count``) without blocking; ``False`` if saturated."""
        try:
            self._out_send.send_nowait(frame)
        except (trio.WouldBlock, trio.ClosedResourceError, trio.BrokenResourceError):
            return False
        return True

    def kick(self) -> None:
        """Drop this connection (its device authenticated on a newer one)."""
        self._end("replaced by a newer connection of the device")
        self._cancel.cancel()

    def revoke(self) -> None:
        """The device was removed from its list: serve nothing more, push
        ``error unknown_device`` (id 0) and close 1008 once it is flushed."""
        self._revoked = True
        self._end(f"closed {CloseCode.POLICY_VIOLATION:d} device removed")
        frame = Error(id=0, code=ErrorCode.UNKNOWN_DEVICE.value,
                      message="this device was removed from the account's device list")
        close = _Close(CloseCode.POLICY_VIOLATION, "device removed")
        if not (self.push_nowait(frame) and self.push_nowait(close)):  # type: ignore[arg-type]
            self._cancel.cancel()


    # ----------------------------------------------------------------- running

    async def run(self) -> None:
        """Serve the connection until it closes, then log one info line saying why.
        Never raises (except Cancelled)."""
        try:
            with self._exits, self._cancel:
                async with trio.open_nursery() as nursery:
                    self._nursery = nursery
                    nursery.start_soon(self._reader)
                    nursery.start_soon(self._writer)
                    nursery.start_soon(self._handshake_deadline)
                    await self._handle_all(nursery)
                    await self._close(CloseCode.NORMAL, "")
        except Exception:  # noqa: BLE001 - the per-connection boundary: log, internal, close 1011
            self._log.exception("connection %s (%s): unexpected error", self._remote,
                                self._who())
            self._ended = f"closed {CloseCode.INTERNAL_ERROR:d} internal error"
            with trio.move_on_after(1):
                try:
                    await self._ws.send_message(write_frame(Error(id=0, code="internal")))
                    await self._ws.aclose(CloseCode.INTERNAL_ERROR, "internal error")
                except ConnectionClosed:
                    pass
        self._log.info("connection %s (%s) ended after %.1f s: %s", self._remote, self._who(),
                       trio.current_time() - self._started, self._ended or "closed")

    def _end(self, reason: str) -> None:
        if self._ended is None:
            self._ended = reason

    def _who(self) -> str:
        if self._conn.state is ConnState.CLIENT:
            return f"device {self._conn.user_id[:8]}/{self._conn.device_id}"  # type: ignore[index]
        if self._conn.state is ConnState.PEER:
            return f"peer {self._conn.peer_id}"
        return "unauthenticated"

    async def _handshake_deadline(self) -> None:
        if not await self._deadline.wait():
            return
        self._end(f"closed {CloseCode.POLICY_VIOLATION:d} no authentication within "
                  f"{self._node.config.handshake_timeout:g} s")
        frame = Error(id=0, code=ErrorCode.UNAUTHORIZED.value,
                      message="authenticate within "
                              f"{self._node.config.handshake_timeout:g} s of connecting")
        close = _Close(CloseCode.POLICY_VIOLATION, "handshake timeout")
        if self.push_nowait(frame) and self.push_nowait(close):  # type: ignore[arg-type]
            await trio.sleep(CLOSE_TIMEOUT)  # the writer cancels us once closed
        self._cancel.cancel()

    def _authenticated(self) -> None:
        self._deadline.done()
        self._ticket.authenticated()

    async def _reader(self) -> None:
        async with self._in_send:
            while True:
                try:
                    message = await self._ws.get_message()
                except ConnectionClosed as exc:
                    self._end(f"closed by the remote ({exc.reason.code})")
                    return
                await self._in_send.send(message)

    async def _writer(self) -> None:
        async with self._out_recv:
            async for item in self._out_recv:
                if isinstance(item, _Close):
                    with trio.move_on_after(CLOSE_TIMEOUT):
                        await self._ws.aclose(item.code, item.reason)
                    break
                try:
                    await self._ws.send_message(write_frame(item))
                except ConnectionClosed as exc:
                    self._end(f"closed by the remote ({exc.reason.code})")
                    break
        self._cancel.cancel()

    async def _send(self, frame: Frame) -> None:
        await self._out_send.send(frame)

    async def _close(self, code: int, reason: str) -> None:
        """Flush queued frames, close with ``code`` and end the connection."""
        self._end(f"closed {code} {reason}".rstrip())
        await self._out_send.send(_Close(code, reason))
        await trio.sleep(CLOSE_TIMEOUT)  # the writer cancels us once closed
        self._cancel.cancel()

    async def _handle_all(self, nursery: trio.Nursery) -> None:
        async for message in self._in_recv:
            try:
                frame = self._conn.receive_data(message)
            except RemoteProtocolError as exc:
                self._log.debug("connection %s: %s (%s)", self._remote, exc.code.value, self._who())
                await self._send(self._conn.error_frame(exc))
                if exc.close_code is not None:
                    await self._close(exc.close_code, exc.code.value)
                continue
            if self._conn.state is ConnState.PEER and not isinstance(frame, PeerAuth):
                await self._peer_slots.acquire()
                nursery.start_soon(self._peer_request, frame)
            else:
                await self._request(frame)

    async def _peer_request(self, frame: Frame) -> None:
        try:
            await self._request(frame)
        finally:
            self._peer_slots.release()

    async def _request(self, frame: Frame) -> None:
        if self._revoked:
            return
        try:
            answer = await self._dispatch(frame)
        except KNOWN_REFUSALS as exc:
            err = relay_error_from(exc)
            assert err is not None
            self._log.debug("%s %s -> %s", self._who(), frame.TYPE, err.code.value)
            if err.code is ErrorCode.STORAGE_FULL:
                self._node.full_log.note(frame.TYPE, trio.current_time())
            answer = err.to_frame(frame.id)
        if answer is not None:
            await self._send(answer)

    # ----------------------------------------------------------------- requests

    async def _dispatch(self, frame: Frame) -> Frame | None:
        node = self._node
        match frame:
            case Hello():
                return self._conn.challenge(os.urandom(32), node.id, node.ring.version)
            case Ping():
                return Ok(id=frame.id)
            case Auth():
                return await self._auth(frame)
            case PeerAuth():
                return self._peer_auth(frame)
            case PutDevices():
                await node.changes.publish(frame.device_list)
                return Ok(id=frame.id)
            case LinkOpen():
                assert self._nursery is not None
                opened = self._link.open(frame.device_info, self._nursery)
                self._deadline.extend(node.linking.ttl + node.config.handshake_timeout)
                return dataclasses.replace(opened, id=frame.id)
            case LinkFetch() | LinkComplete():
                return await node.linking.handle(
                    frame, from_peer=self._conn.state is ConnState.PEER)
            case Notify():
                await node.changes.receive(frame, self._conn.peer_id)  # type: ignore[arg-type]
                return Ok(id=frame.id)
            case GetDevices():
                peer = self._conn.state is ConnState.PEER
                return await lookups.get_devices(
                    node, frame, user_id=None if peer else self._conn.user_id,
                    peer_id=self._conn.peer_id if peer else None)
            case UploadKeys():
                count = await node.directory.upload_keys(
                    self._conn.user_id, self._conn.device_id,  # type: ignore[arg-type]
                    frame.one_time_keys, frame.fallback_key,
                )
                return KeyCount(id=frame.id, otk_count=count)
            case ClaimKeys():
                return await lookups.claim_keys(
                    node, frame, from_peer=self._conn.state is ConnState.PEER)
            case Send():
                status = await node.router.send(
                    self._conn.user_id, self._conn.device_id,  # type: ignore[arg-type]
                    frame.msg_id, frame.recipients,
                )
                return Sent(id=frame.id, status=status)
            case Forward():
                node.router.check_from_peer(frame.sender_user, self._conn.peer_id)  # type: ignore[arg-type]
                await node.router.store_local(frame)
                return Ok(id=frame.id)
            case GroupSend():
                status = await node.groups.send(
                    self._conn.user_id, self._conn.device_id,  # type: ignore[arg-type]
                    frame.msg_id, frame.body, frame.recipients,
                )
                return Sent(id=frame.id, status=status)
            case GroupForward():
                node.router.check_from_peer(frame.sender_user, self._conn.peer_id)  # type: ignore[arg-type]
                await node.groups.store_local(frame)
                return Ok(id=frame.id)
            case MediaUpload():
                return await node.media.upload(self._conn.user_id, frame)  # type: ignore[arg-type]
            case MediaStatus():
                return await node.media.status(frame)
            case MediaDownload():
                return await node.media.download(
                    frame, from_peer=self._conn.state is ConnState.PEER)
            case Sync():
                return self._start_sync()
            case Ack():
                user_id, device_id = self._conn.user_id, self._conn.device_id
                await node.storage.ack(user_id, device_id, frame.seq)  # type: ignore[arg-type]
                if self._pusher is not None:
                    self._pusher.on_ack(frame.seq)
                return None
        raise RelayError(ErrorCode.BAD_REQUEST, f"{frame.TYPE!r} is not supported by this node yet")

    async def _auth(self, frame: Auth) -> Frame:
        node = self._node
        await check_device_auth(node, self._conn.nonce, frame)  # type: ignore[arg-type]
        self._conn.mark_authenticated_client(frame.user_id, frame.device_id)
        self._authenticated()
        self._exits.enter_context(node.registry.register(frame.user_id, frame.device_id, self))
        self._log.debug("device %s/%d authenticated", frame.user_id[:8], frame.device_id)
        count = await node.directory.key_count(frame.user_id, frame.device_id)
        return AuthOk(id=frame.id, otk_count=count)

    def _peer_auth(self, frame: PeerAuth) -> Frame:
        answer = check_peer_auth(self._node, self._conn.nonce, frame)  # type: ignore[arg-type]
        self._conn.mark_authenticated_peer(frame.node_id)
        self._authenticated()
        self._node.federation.kick(frame.node_id)  # it is up: our link to it may reconnect now
        self._log.debug("peer %s authenticated", frame.node_id)
        return answer

    def _start_sync(self) -> None:
        if self._pusher is not None:
            raise RelayError(ErrorCode.BAD_REQUEST, "already syncing")
        node = self._node
        self._pusher = Pusher(node.storage, node.registry, self._conn.user_id,  # type: ignore[arg-type]
                              self._conn.device_id, self._send,  # type: ignore[arg-type]
                              queue_ttl=node.config.queue_ttl)
        assert self._nursery is not None
        self._nursery.start_soon(self._pusher.run)
        return None
