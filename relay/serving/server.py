"""The node's dispatcher of one accepted connection: devices (clients) and peer nodes.

The connection's mechanics (reading ahead with backpressure, the writer, keepalive,
the handshake deadline, answering before a Close, the per-connection error
boundary) are :class:`relay.net.accepted.AcceptedLink`'s, the accepting side of the
one connection layer. :class:`Connection` is what the link hands requests to
(:class:`relay.net.accepted.Dispatcher`):

* a run of requests read in order: consecutive ``send`` / ``group_send`` requests
  of a device are routed as one batch (:meth:`relay.services.router.Router.send_batch`:
  one ``enqueue_many`` for the local parts, ``forward_batch`` lanes for the others),
  the rest go one after the other through the handshake's own handlers and the
  node's per-service handler table (:func:`relay.services.table.node_table`);
* a peer's requests other than forwards are *concurrent*: the link runs each in a
  task of its own (at most ``PEER_CONCURRENCY``) and they are answered by id,
  possibly out of order; a peer's forwards are served in order;
* an ``ack`` is clamped to what this connection wrote and coalesced
  (:mod:`relay.serving.acks`);
* after ``sync``, a :class:`~relay.services.delivery.Pusher` streams the device's queue.

A connection that opened a linking mailbox (``link_open``) owns it: the
mailbox goes when the connection ends or opens another (:mod:`relay.services.linking`);
if it expires unused, the connection gets ``error not_found`` (id 0).
A device removed from its list is *revoked*: it gets ``error unknown_device``
(id 0), nothing more is served, and the connection closes with 1008.

A connection that has not authenticated (or opened a linking mailbox) within
``handshake_timeout`` seconds gets ``error unauthorized`` (id 0) and close 1008.
The first ``link_open`` gives the connection the mailbox's lifetime (``link_ttl``,
plus ``handshake_timeout`` to hear that it expired) from then, once: later ``link_open`` (rate-limited per address) replace the mailbox
but never extend the connection's life. An unauthenticated connection may be
evicted for a newer one (:mod:`relay.net.admission`): it is closed with 1008. Connections are admitted (or refused)
by :mod:`relay.net.listener` before they get here.

Error handling: protocol problems are answered by the link; refusals
(:data:`relay.errors.KNOWN_REFUSALS`) answer their code; any other exception is a
bug, which the link logs and answers with ``error internal`` and close 1011.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import TYPE_CHECKING

import trio

from relay.errors import KNOWN_REFUSALS, RelayError, relay_error_from
from relay.net.accepted import PEER_CONCURRENCY, AcceptedLink
from relay.protocol import CloseCode, ErrorCode
from relay.protocol.connection import ConnState
from relay.protocol.frames import (
    Auth,
    AuthOk,
    BounceBack,
    ClusterInfo,
    Envelope,
    Error,
    Forward,
    ForwardBatch,
    Frame,
    GetCluster,
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

__all__ = ["PEER_CONCURRENCY", "Connection"]

_SENDS = (Send, GroupSend)
_ORDERED_PEER = (Forward, GroupForward, ForwardBatch)


class Connection:
    """Dispatches the requests of one accepted connection (device or peer node) on
    ``node`` (a :class:`relay.net.accepted.Dispatcher` of ``link``).

    Implements :class:`relay.services.delivery.Session` for the device registry.
    """

    def __init__(self, node: Node, link: AcceptedLink) -> None:
        self._node = node
        self._link = link
        self._conn = link.conn
        self._log: logging.Logger = node.log
        self._metrics = node.metrics
        self._caller = Caller(address=link.address)
        self._pusher: Pusher | None = None
        self._acks: AckFlusher | None = None
        self._acked = 0
        self._written = 0  # the highest seq whose deliver frame was written to the socket
        self._link_slot = LinkSlot(node.linking, self.push_nowait, link.send, link.address)
        link.exits.callback(self._link_slot.close)
        self._revoked = False
        self._own: dict[type[Frame], Handler] = {
            Hello: self._hello, Ping: self._ping, Auth: self._auth, PeerAuth: self._peer_auth,
            GetCluster: self._get_cluster,
            LinkOpen: self._link_open, LinkReply: self._link_reply, Sync: self._sync,
        }

    # ----------------------------------------------------------------- Session

    def push_nowait(self, frame: Frame) -> bool:
        """Queue a push (e.g. ``key_count``) without blocking; ``False`` if saturated
        or the connection has ended."""
        return self._link.push_nowait(frame)

    @property
    def streaming(self) -> bool:
        """Whether the device sent ``sync`` (it reads pushes: ephemeral sends go to it)."""
        return self._pusher is not None

    def kick(self) -> None:
        """Drop this connection (its device authenticated on a newer one)."""
        self._link.cancel("replaced by a newer connection of the device")

    def revoke(self) -> None:
        """The device was removed from its list: serve nothing more, push
        ``error unknown_device`` (id 0) and close 1008 once it is flushed."""
        self._revoked = True
        self._link.end(f"closed {CloseCode.POLICY_VIOLATION:d} device removed")
        frame = Error(id=0, code=ErrorCode.UNKNOWN_DEVICE.value,
                      message="this device was removed from the account's device list")
        if not (self.push_nowait(frame)
                and self._link.close_nowait(CloseCode.POLICY_VIOLATION, "device removed")):
            self._link.cancel("device removed")

    def move(self, url: str) -> None:
        """The user's home moves (a reshape): answer the requests read so far, then push
        ``error moved`` (id 0, ``url``) and close 1001; later requests are not served."""
        self._link.close_after_read(
            Error(id=0, code=ErrorCode.MOVED.value, url=url,
                  message="the home of this user moved; connect there"),
            CloseCode.GOING_AWAY, "home moved")

    def offer(self, items: list[tuple[int, float, bytes]]) -> bool:
        """Deliver just-committed envelopes now if the pusher is idle and caught up
        (:meth:`relay.services.delivery.Pusher.offer`); ``False``: wake it instead."""
        if self._pusher is None or self._revoked:
            return False
        try:
            return self._pusher.offer(items)
        except Exception as exc:  # noqa: BLE001 - a bug: this connection's boundary, not the loop's
            self._link.fail(exc)  # (raised here it would end the event loop: run_sync_soon)
            return False

    # ----------------------------------------------------------------- Dispatcher

    def on_ack(self, seq: int) -> None:
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

    def concurrent(self, frame: Frame) -> bool:
        """A peer's requests other than forwards run concurrently."""
        return self._conn.state is ConnState.PEER and not isinstance(frame, _ORDERED_PEER)

    async def settled(self) -> None:
        """Return once the acks read so far are applied."""
        if self._acks is not None:
            await self._acks.flushed()

    async def serve(self, frames: list[Frame]) -> None:
        """Serve ``frames`` in order (a device's consecutive sends as one batch)."""
        i = 0
        while i < len(frames):
            item = frames[i]
            if self._revoked:  # refuse what was read; the close (1008) follows
                await self._send(Error(id=item.id, code=ErrorCode.UNKNOWN_DEVICE.value,
                                       message="this device was removed"))
                i += 1
                continue
            if (isinstance(item, _SENDS) and self._conn.state is ConnState.CLIENT
                    and not getattr(item, "ephemeral", None)):  # ephemeral: the handler table
                j = i + 1
                while (j < len(frames) and isinstance(frames[j], _SENDS)
                       and not getattr(frames[j], "ephemeral", None)):
                    j += 1
                user_id, device_id = self._caller.device()
                answers = await self._node.router.send_batch(
                    user_id, device_id, frames[i:j], address=self._link.address)  # type: ignore[arg-type]
                for answer in answers:
                    self._note_refusal(answer)
                await self._link.send_many(answers)
                i = j
                continue
            await self._request(item)
            i += 1

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
            self._log.debug("%s %s -> %s", self._link.who(), what, answer.code)
            if answer.code == ErrorCode.STORAGE_FULL.value:
                self._node.full_log.note(what, trio.current_time())

    async def _send(self, frame: Frame) -> None:
        await self._link.send(frame)

    def _authenticated(self) -> None:
        self._link.authenticated()

    # ----------------------------------------------------------------- own requests

    async def _hello(self, caller: Caller, frame: Frame) -> Frame:
        node = self._node
        return self._conn.challenge(
            os.urandom(32), node.id, node.ring.version,
            sign=lambda message: node.signing_key.sign(message).signature,
            binding=node.binding, cluster_version=node.cluster_version)

    async def _get_cluster(self, caller: Caller, frame: Frame) -> Frame:
        doc = self._node.cluster_doc
        if doc is None:
            raise RelayError(ErrorCode.NOT_FOUND, "this node serves no signed cluster description")
        return ClusterInfo(id=frame.id, body=doc.body, signature=doc.signature,
                           cluster_key=doc.cluster_key)

    async def _ping(self, caller: Caller, frame: Frame) -> Frame:
        return Ok(id=frame.id)

    async def _auth(self, caller: Caller, frame: Frame) -> Frame:
        assert isinstance(frame, Auth)
        node = self._node
        await check_device_auth(node, self._conn.nonce, frame)  # type: ignore[arg-type]
        self._conn.mark_authenticated_client(frame.user_id, frame.device_id)
        self._caller = Caller(user_id=frame.user_id, device_id=frame.device_id,
                              address=self._link.address)
        self._authenticated()
        self._link.exits.enter_context(node.registry.register(frame.user_id, frame.device_id, self))
        self._log.debug("device %s/%d authenticated", frame.user_id[:8], frame.device_id)
        count = await node.directory.key_count(frame.user_id, frame.device_id)
        urls = node.config.node.urls
        return AuthOk(id=frame.id, otk_count=count, urls=list(urls) if len(urls) > 1 else None,
                      cluster=[n.url for n in node.ring.nodes])

    async def _peer_auth(self, caller: Caller, frame: Frame) -> Frame:
        assert isinstance(frame, PeerAuth)
        answer = check_peer_auth(self._node, self._conn.nonce, frame)  # type: ignore[arg-type]
        self._conn.mark_authenticated_peer(frame.node_id)
        self._caller = Caller(peer_id=frame.node_id, address=self._link.address)
        self._authenticated()
        self._node.federation.kick(frame.node_id)  # it is up: our link to it may reconnect now
        self._log.debug("peer %s authenticated", frame.node_id)
        return answer

    async def _link_open(self, caller: Caller, frame: Frame) -> Frame:
        assert isinstance(frame, LinkOpen) and self._link.nursery is not None
        node = self._node
        node.rates.take("link_open", address=self._link.address)
        opened = self._link_slot.open(frame.device_info, self._link.nursery,
                                      short=bool(frame.short))
        self._link.linking_deadline(node.linking.ttl + node.config.handshake_timeout)
        return dataclasses.replace(opened, id=frame.id)

    async def _link_reply(self, caller: Caller, frame: Frame) -> Frame:
        assert isinstance(frame, LinkReply)
        self._link_slot.reply(frame.body)
        return Ok(id=frame.id)

    async def _bounce_remote(self, envelope: Envelope) -> None:
        """Hand a ``bounce`` for a sender homed at another node to the durable outbox."""
        home = self._node.homes.home(envelope.sender_user).id
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

        await self._link.send_data(data, written)

    def _push_nowait(self, frames: list[bytes], last_seq: int) -> bool:
        """The pusher's :meth:`~relay.services.delivery.Pusher.offer` write: now, if
        the writer is idle; acks are clamped to it once written, as for :meth:`_push`."""
        def written() -> None:
            self._written = max(self._written, last_seq)

        return self._link.send_data_nowait(frames, written)

    async def _sync(self, caller: Caller, frame: Frame) -> None:
        if self._pusher is not None:
            raise RelayError(ErrorCode.BAD_REQUEST, "already syncing")
        node = self._node
        user_id, device_id = caller.device()
        self._pusher = Pusher(node.storage, node.registry, user_id, device_id, self._push,
                              max_frame=node.limits.max_frame, queue_ttl=node.config.queue_ttl,
                              is_local=node.directory.is_home, notify=node.registry.notify,
                              bounce_remote=self._bounce_remote, log=node.log,
                              send_nowait=self._push_nowait if self._link.writes_nowait
                              else None)  # under TLS: never offered, woken as before
        self._acks = AckFlusher(node.storage, user_id, device_id, node.log)
        assert self._link.nursery is not None
        self._link.nursery.start_soon(self._pusher.run)
        self._link.nursery.start_soon(self._acks.run)
        return None
