"""The per-connection handler of a node: devices (clients) and peer nodes.

Tasks of one connection, all in one nursery:

* the **reader** always drains the WebSocket: it decodes and admits each
  message at once (:class:`~relay.protocol.connection.ServerConnection`), applies
  an ``ack`` on the spot (clamped, then coalesced: :mod:`relay.serving.acks`) and
  queues every other request; it reads ahead at most ``window`` unanswered
  requests (announced in ``challenge``) and ``READ_AHEAD_BYTES``, then waits
  (backpressure);
* the **handler** (this task) takes *every* queued request at each wakeup and
  serves them in order: a run of consecutive ``send`` / ``group_send`` requests
  is routed as one batch (:meth:`relay.services.router.Router.send_batch`: one
  ``enqueue_many`` for the local parts, ``forward_batch`` lanes for the others),
  the rest through the node's per-service handler table
  (:func:`relay.services.table.node_table`). A peer's requests other than
  forwards run concurrently (at most ``PEER_CONCURRENCY``) and are answered by
  id, possibly out of order; a peer's forwards are served in order;
* the **writer** (:class:`relay.net.writer.FrameWriter`) is the only task that
  writes: it takes every encoded frame queued (bounded) and writes them with one
  socket write;
* after ``sync``, a :class:`~relay.services.delivery.Pusher` streams the device's queue.

Answers are matched by request id. A remote Close waits until every request
read before it has been answered and written (:mod:`relay.net.wsio`); a request
read before the node closes is answered (or refused) before the node's Close.
An answer, push or close for a connection that has already ended is dropped
with a debug line; it never cancels the connection's other requests.

A connection that opened a linking mailbox (``link_open``) owns it: the
mailbox goes when the connection ends or opens another (:mod:`relay.services.linking`);
if it expires unused, the connection gets ``error not_found`` (id 0).
A device removed from its list is *revoked*: it gets ``error unknown_device``
(id 0), nothing more is served, and the connection closes with 1008.

A connection that has not authenticated (or opened a linking mailbox) within
``handshake_timeout`` seconds gets ``error unauthorized`` (id 0) and close 1008;
a mailbox extends that by its lifetime. Connections are admitted (or refused)
by :mod:`relay.serving.listener` before they get here.

Error handling: protocol problems answer ``error`` (closing when the error
carries a close code); refusals (:data:`relay.errors.KNOWN_REFUSALS`) answer
their code; any other exception is a bug, logged (metadata only) and answered
with ``error internal`` and close 1011. The node keeps serving the others.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections import deque
from contextlib import ExitStack
from dataclasses import dataclass
from typing import TYPE_CHECKING

import trio
from trio_websocket import ConnectionClosed, WebSocketConnection

from relay.errors import KNOWN_REFUSALS, RelayError, relay_error_from
from relay.net.admission import HandshakeDeadline, Ticket
from relay.net.writer import CLOSE_TIMEOUT, FrameWriter
from relay.net.wsio import GatedWebSocket
from relay.protocol import CloseCode, ErrorCode, RemoteProtocolError, write_frame
from relay.protocol.connection import ConnState, ServerConnection
from relay.protocol.frames import (
    Ack,
    Auth,
    AuthOk,
    BounceBack,
    Envelope,
    Error,
    Forward,
    ForwardBatch,
    Frame,
    GroupForward,
    GroupSend,
    Hello,
    LinkOpen,
    LinkReply,
    Ok,
    PeerAuth,
    Ping,
    Send,
    Sync,
)
from relay.services.base import Caller, Handler
from relay.services.delivery import Pusher
from relay.services.linking import LinkSlot
from relay.serving.acks import AckFlusher
from relay.serving.auth import check_device_auth, check_peer_auth

if TYPE_CHECKING:
    from relay.node import Node

READ_AHEAD_BYTES = 8 * 1024 * 1024
"""Bytes of read but unserved requests after which the reader waits (with the window,
this bounds a connection's read-ahead memory whatever its frames' sizes)."""
PEER_CONCURRENCY = 64
_SENDS = (Send, GroupSend)
_ORDERED_PEER = (Forward, GroupForward, ForwardBatch)



@dataclass(frozen=True, slots=True)
class _Refusal:
    """A message that could not be admitted: its error answer, in reading order."""

    error: Error
    close_code: int | None
    code: str


class Connection:
    """One accepted WebSocket (device or peer node) on ``node``.

    Implements :class:`relay.services.delivery.Session` for the device registry.
    """

    def __init__(self, node: Node, ws: WebSocketConnection, remote: str, ticket: Ticket) -> None:
        self._node = node
        self._ws = ws
        self._remote = remote
        self._ticket = ticket
        self._deadline = HandshakeDeadline(node.config.handshake_timeout)
        self._log: logging.Logger = node.log
        self._conn = ServerConnection(node.limits)  # peers: node.limits.for_peers()
        self._caller = Caller()
        self._requests: deque[Frame | _Refusal] = deque()
        self._queued_bytes = 0
        self._more = trio.Event()  # the reader queued something (or ended)
        self._room = trio.Event()  # the handler took the queue
        self._reading = True
        self._busy = False
        self._peer_tasks = 0
        self._progress = trio.Event()
        metrics = node.metrics
        self._metrics = metrics
        self._out = FrameWriter(ws, remote, on_progress=self._signal, on_remote_close=self._end,
                                on_written=metrics.written)
        self._cancel = trio.CancelScope()
        self._pusher: Pusher | None = None
        self._acks: AckFlusher | None = None
        self._acked = 0
        self._written = 0  # the highest seq whose deliver frame was written to the socket
        self._peer_slots = trio.Semaphore(PEER_CONCURRENCY)
        self._exits = ExitStack()
        self._nursery: trio.Nursery | None = None
        self._link = LinkSlot(node.linking, self.push_nowait, self._send, ticket.key)
        self._exits.callback(self._link.close)
        self._revoked = False
        self._started = trio.current_time()
        self._last_rx = self._started  # when the reader last took a message
        self._ended: str | None = None  # why the connection ends (the first reason wins)
        self._own: dict[type[Frame], Handler] = {
            Hello: self._hello, Ping: self._ping, Auth: self._auth, PeerAuth: self._peer_auth,
            LinkOpen: self._link_open, LinkReply: self._link_reply, Sync: self._sync,
        }
        if isinstance(ws, GatedWebSocket):
            ws.close_gate = self._settle

    # ----------------------------------------------------------------- Session

    def push_nowait(self, frame: Frame) -> bool:
        """Queue a push (e.g. ``key_count``) without blocking; ``False`` if saturated
        or the connection has ended."""
        return self._out.push_nowait(write_frame(frame))

    @property
    def streaming(self) -> bool:
        """Whether the device sent ``sync`` (it reads pushes: ephemeral sends go to it)."""
        return self._pusher is not None

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
        if not (self.push_nowait(frame)
                and self._out.close_nowait(CloseCode.POLICY_VIOLATION, "device removed")):
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
                    nursery.start_soon(self._out.run, self._cancel)
                    nursery.start_soon(self._handshake_deadline)
                    nursery.start_soon(self._keepalive)
                    await self._handle_all()
                    if self._acks is not None:  # acks read before the end are applied
                        with trio.move_on_after(CLOSE_TIMEOUT):
                            await self._acks.flushed()
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

    def _signal(self) -> None:
        self._progress.set()
        self._progress = trio.Event()

    async def _handshake_deadline(self) -> None:
        if not await self._deadline.wait():
            return
        self._end(f"closed {CloseCode.POLICY_VIOLATION:d} no authentication within "
                  f"{self._node.config.handshake_timeout:g} s")
        frame = Error(id=0, code=ErrorCode.UNAUTHORIZED.value,
                      message="authenticate within "
                              f"{self._node.config.handshake_timeout:g} s of connecting")
        await self._send(frame)
        await self._close(CloseCode.POLICY_VIOLATION, "handshake timeout")

    async def _keepalive(self) -> None:
        """Notice a dead link (issue 15, "Dead links noticed"): after
        ``keepalive_interval`` s with no message from the other end, send a WebSocket
        ping (RFC 6455 5.5.2; every wa-relay end keeps a reader draining its socket,
        so trio-websocket answers it); no pong within ``keepalive_timeout`` s (or a
        send buffer that stays full for that long) ends the connection, which frees
        the device's registration and its in-flight window. A socket write that has
        not finished after ``keepalive_interval + keepalive_timeout`` s ends the
        connection too, whatever arrives meanwhile: the other end reads nothing (a
        device that never reads but keeps sending ``ack`` frames would otherwise
        pin the frames queued for it forever)."""
        config = self._node.config
        interval, timeout = config.keepalive_interval, config.keepalive_timeout
        if interval <= 0:
            return
        stall_limit = interval + timeout
        while True:
            now = trio.current_time()
            writing = self._out.writing_since
            if writing is not None and now - writing >= stall_limit:
                self._end(f"no write progress for {stall_limit:g} s (the remote reads nothing)")
                self._log.debug("connection %s (%s): writes stalled", self._remote, self._who())
                self._cancel.cancel()
                return
            idle = now - self._last_rx
            if idle < interval:
                wait = interval - idle
                if writing is not None:
                    wait = min(wait, writing + stall_limit - now)
                await trio.sleep(wait)
                continue
            with trio.move_on_after(timeout) as waited:
                try:
                    await self._ws.ping()
                except (ConnectionClosed, trio.BrokenResourceError, trio.ClosedResourceError):
                    return  # ended anyway; the reader tells why
            if not waited.cancelled_caught:
                self._last_rx = max(self._last_rx, trio.current_time())
                continue
            self._end(f"no answer to a keepalive ping within {timeout:g} s")
            self._log.debug("connection %s (%s): keepalive timed out", self._remote, self._who())
            self._cancel.cancel()
            return

    def _authenticated(self) -> None:
        self._deadline.done()
        self._ticket.authenticated()

    # ----------------------------------------------------------------- reading

    async def _reader(self) -> None:
        try:
            while True:
                try:
                    message = await self._ws.get_message()
                except ConnectionClosed as exc:
                    reason = exc.reason.code if exc.reason is not None else "?"
                    self._end(f"closed by the remote ({reason})")
                    return
                self._last_rx = trio.current_time()
                self._take(message)
                if isinstance(self._ws, GatedWebSocket):  # what is buffered, without yielding
                    while len(self._requests) < self._conn.window:
                        more = self._ws.get_message_nowait()
                        if more is None:
                            break
                        self._take(more)
                while (len(self._requests) >= self._conn.window
                       or self._queued_bytes >= READ_AHEAD_BYTES):
                    self._room = trio.Event()
                    await self._room.wait()
        finally:
            self._reading = False
            self._more.set()
            self._signal()

    def _take(self, message: bytes | str) -> None:
        """Decode and admit one message; apply an ack now, queue anything else."""
        self._metrics.read(message)
        try:
            frame = self._conn.receive_data(message)
        except RemoteProtocolError as exc:
            self._requests.append(_Refusal(self._conn.error_frame(exc), exc.close_code,
                                           exc.code.value))
        else:
            if isinstance(frame, Ack):
                self._ack(frame.seq)
                self._signal()
                return
            self._requests.append(frame)
        self._queued_bytes += len(message)
        self._more.set()
        self._signal()

    def _ack(self, seq: int) -> None:
        """A cumulative ack: clamp it to what this connection delivered, then delete
        (coalesced: :class:`relay.serving.acks.AckFlusher`)."""
        if self._revoked or self._pusher is None or self._acks is None:
            return  # nothing was delivered on this connection: nothing to delete
        seq = min(seq, self._written)
        if seq <= self._acked:
            return
        self._acked = seq
        self._pusher.on_ack(seq)
        self._acks.post(seq)

    # ----------------------------------------------------------------- handling

    async def _handle_all(self) -> None:
        """Serve queued requests until the reader ended and everything read is answered."""
        async with trio.open_nursery() as peers:
            while True:
                if not self._requests:
                    if not self._reading:
                        return  # the peer nursery waits for requests still running
                    self._more = trio.Event()
                    await self._more.wait()
                    continue
                batch = list(self._requests)
                self._requests.clear()
                self._queued_bytes = 0
                self._room.set()
                self._busy = True
                try:
                    if not await self._serve(batch, peers):
                        return
                finally:
                    self._busy = False
                    self._signal()

    async def _serve(self, batch: list[Frame | _Refusal], peers: trio.Nursery) -> bool:
        """Serve ``batch`` in order; ``False`` once the connection must close."""
        i = 0
        while i < len(batch):
            item = batch[i]
            if isinstance(item, _Refusal):
                self._log.debug("connection %s: %s (%s)", self._remote, item.code, self._who())
                await self._send(item.error)
                if item.close_code is not None:
                    await self._close(item.close_code, item.code)
                    return False
                i += 1
                continue
            if self._revoked:  # refuse what was read; the close (1008) follows
                await self._send(Error(id=item.id, code=ErrorCode.UNKNOWN_DEVICE.value,
                                       message="this device was removed"))
                i += 1
                continue
            if (isinstance(item, _SENDS) and self._conn.state is ConnState.CLIENT
                    and not getattr(item, "ephemeral", None)):  # ephemeral: the handler table
                j = i + 1
                while (j < len(batch) and isinstance(batch[j], _SENDS)
                       and not getattr(batch[j], "ephemeral", None)):
                    j += 1
                user_id, device_id = self._caller.device()
                answers = await self._node.router.send_batch(user_id, device_id, batch[i:j])  # type: ignore[arg-type]
                for answer in answers:
                    self._note_refusal(answer)
                await self._out.send_many([write_frame(a) for a in answers])
                i = j
                continue
            if self._conn.state is ConnState.PEER and not isinstance(item, _ORDERED_PEER):
                await self._peer_slots.acquire()
                self._peer_tasks += 1
                peers.start_soon(self._peer_request, item)
            else:
                await self._request(item)
            i += 1
        return True

    async def _peer_request(self, frame: Frame) -> None:
        try:
            await self._request(frame)
        finally:
            self._peer_slots.release()
            self._peer_tasks -= 1
            self._signal()

    async def _request(self, frame: Frame) -> None:
        handler = self._own.get(type(frame)) or self._node.handlers.get(type(frame))
        try:
            if handler is None:
                raise RelayError(ErrorCode.BAD_REQUEST,
                                 f"{frame.TYPE!r} is not supported by this node yet")
            answer = await handler(self._caller, frame)
        except KNOWN_REFUSALS as exc:
            err = relay_error_from(exc)
            assert err is not None
            answer = err.to_frame(frame.id)
            self._note_refusal(answer, frame.TYPE)
        if answer is not None:
            await self._send(answer)

    def _note_refusal(self, answer: Frame, what: str = "send") -> None:
        if isinstance(answer, Error):
            self._metrics.refusal(answer.code)
            self._log.debug("%s %s -> %s", self._who(), what, answer.code)
            if answer.code == ErrorCode.STORAGE_FULL.value:
                self._node.full_log.note(what, trio.current_time())

    # ----------------------------------------------------------------- writing

    async def _send(self, frame: Frame) -> None:
        await self._out.send(write_frame(frame))

    async def _close(self, code: int, reason: str) -> None:
        """Flush queued frames, close with ``code`` and end the connection."""
        self._end(f"closed {code} {reason}".rstrip())
        await self._out.close(code, reason)
        self._cancel.cancel()

    async def _settle(self, buffered) -> None:
        """Close gate (:mod:`relay.net.wsio`): return once every message read has been
        served, every answer written and every ack applied."""
        while buffered() or self._requests or self._busy or self._peer_tasks or self._out.unwritten:
            if self._out.done.is_set():
                return
            await self._progress.wait()
        if self._acks is not None:  # acks read before the Close are applied too
            await self._acks.flushed()

    # ----------------------------------------------------------------- own requests

    async def _hello(self, caller: Caller, frame: Frame) -> Frame:
        return self._conn.challenge(os.urandom(32), self._node.id, self._node.ring.version)

    async def _ping(self, caller: Caller, frame: Frame) -> Frame:
        return Ok(id=frame.id)

    async def _auth(self, caller: Caller, frame: Frame) -> Frame:
        assert isinstance(frame, Auth)
        node = self._node
        await check_device_auth(node, self._conn.nonce, frame)  # type: ignore[arg-type]
        self._conn.mark_authenticated_client(frame.user_id, frame.device_id)
        self._caller = Caller(user_id=frame.user_id, device_id=frame.device_id)
        self._authenticated()
        self._exits.enter_context(node.registry.register(frame.user_id, frame.device_id, self))
        self._log.debug("device %s/%d authenticated", frame.user_id[:8], frame.device_id)
        count = await node.directory.key_count(frame.user_id, frame.device_id)
        return AuthOk(id=frame.id, otk_count=count)

    async def _peer_auth(self, caller: Caller, frame: Frame) -> Frame:
        assert isinstance(frame, PeerAuth)
        answer = check_peer_auth(self._node, self._conn.nonce, frame)  # type: ignore[arg-type]
        self._conn.mark_authenticated_peer(frame.node_id)
        self._caller = Caller(peer_id=frame.node_id)
        self._authenticated()
        self._node.federation.kick(frame.node_id)  # it is up: our link to it may reconnect now
        self._log.debug("peer %s authenticated", frame.node_id)
        return answer

    async def _link_open(self, caller: Caller, frame: Frame) -> Frame:
        assert isinstance(frame, LinkOpen) and self._nursery is not None
        node = self._node
        opened = self._link.open(frame.device_info, self._nursery, short=bool(frame.short))
        self._deadline.extend(node.linking.ttl + node.config.handshake_timeout)
        return dataclasses.replace(opened, id=frame.id)

    async def _link_reply(self, caller: Caller, frame: Frame) -> Frame:
        assert isinstance(frame, LinkReply)
        self._link.reply(frame.body)
        return Ok(id=frame.id)

    async def _bounce_remote(self, envelope: Envelope) -> None:
        """Hand a ``bounce`` for a sender homed at another node to the durable outbox."""
        home = self._node.ring.home(envelope.sender_user).id
        await self._node.outbox.put(BounceBack(id=0, envelope=envelope), home)

    async def _push(self, data: bytes) -> None:
        """The pusher's send: an ack is clamped to the deliveries *written* to the
        socket, not merely queued (the pusher counts a frame delivered before it is
        queued; a device that reads nothing could otherwise ack, and delete, what
        never left the node)."""
        assert self._pusher is not None
        seq = self._pusher.delivered  # the last seq of this frame (set before it is sent)

        def written() -> None:
            self._written = max(self._written, seq)

        await self._out.send(data, written)

    async def _sync(self, caller: Caller, frame: Frame) -> None:
        if self._pusher is not None:
            raise RelayError(ErrorCode.BAD_REQUEST, "already syncing")
        node = self._node
        user_id, device_id = caller.device()
        self._pusher = Pusher(node.storage, node.registry, user_id, device_id, self._push,
                              max_frame=node.limits.max_frame, queue_ttl=node.config.queue_ttl,
                              is_local=node.directory.is_home, notify=node.registry.notify,
                              bounce_remote=self._bounce_remote, log=node.log)
        self._acks = AckFlusher(node.storage, user_id, device_id, node.log)
        assert self._nursery is not None
        self._nursery.start_soon(self._pusher.run)
        self._nursery.start_soon(self._acks.run)
        return None
