"""Node-to-node links: one outgoing, mutually authenticated WebSocket per peer node.

Handshake on a link from node A to node B (docs/protocol.md, "Peer")::

    A -> B  hello {versions: [1], role: "peer"}
    B -> A  challenge {node_id: B, ring_version, nonce_b}        (A checks both)
    A -> B  peer_auth {node_id: A, signature_A(peer_auth_message(nonce_b, A, B, rv)), nonce_a}
    B -> A  peer_auth_ok {signature_B(peer_auth_message(nonce_a, B, A, rv))}   (A verifies)

Requests (``forward``, ``get_devices``, ``claim_keys``) are multiplexed over
the link by request id; the accepting node may answer them out of order. A
broken link fails its pending requests with :class:`LinkDown` and reconnects
with exponential backoff (0.2 s doubling to a 30 s cap, +-25 % jitter); a
request made while the link is down triggers one immediate attempt.

Logging: one info line when a link comes up, one warning when a link that was
up goes down; failed attempts while a peer is down are debug lines (at start-up
the peers are usually still starting), except one warning once a peer has been
unreachable for :data:`UNREACHABLE_WARNING` seconds. A peer that refuses the
handshake (another ring version, a bad signature) is a warning every time.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import os
import random
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TypeVar
from urllib.parse import urlsplit

import nacl.signing
import trio
from trio_websocket import (
    ConnectionClosed,
    HandshakeError,
    WebSocketConnection,
    wrap_client_stream,
)

from relay.errors import RelayError
from relay.protocol import (
    SUPPORTED_VERSIONS,
    ErrorCode,
    Limits,
    RemoteProtocolError,
    peer_auth_message,
    read_frame,
    verify_signature,
    write_frame,
)
from relay.protocol.frames import Challenge, Error, Frame, Hello, PeerAuth, PeerAuthOk
from relay.ring import NodeInfo, Ring

BACKOFF_MIN = 0.2
BACKOFF_MAX = 30.0
CONNECT_TIMEOUT = 5.0
UNREACHABLE_WARNING = 60.0  # seconds a peer may stay unreachable before a warning
RECEIVE_BUFFER = 64 * 1024


class LinkDown(Exception):
    """The peer node could not be reached, or the link broke before the answer came."""


class _LinkError(Exception):
    """The peer misbehaved during the handshake or sent an invalid frame."""


def backoff_delays(
    start: float = BACKOFF_MIN, cap: float = BACKOFF_MAX, rng: random.Random | None = None
):
    """Yield reconnect delays in seconds: ``start`` doubling to ``cap``, each +-25 % jitter."""
    rng = rng or random.Random()
    delay = start
    while True:
        yield delay * rng.uniform(0.75, 1.25)
        delay = min(delay * 2, cap)


@asynccontextmanager
async def open_link_websocket(url: str, max_message_size: int) -> AsyncIterator[WebSocketConnection]:
    """Open a client WebSocket to ``url`` whose TCP stream is always closed on exit.

    (``open_websocket_url`` leaks the socket when cancelled during the opening
    handshake, so the stream is owned here.)

    Raises:
        OSError: cannot connect. trio.TooSlowError: no handshake within
        :data:`CONNECT_TIMEOUT`. ConnectionClosed / HandshakeError: rejected.
    """
    parts = urlsplit(url)
    host, port = parts.hostname or "", parts.port or (443 if parts.scheme == "wss" else 80)
    resource = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    with trio.fail_after(CONNECT_TIMEOUT):
        if parts.scheme == "wss":
            stream: trio.abc.Stream = await trio.open_ssl_over_tcp_stream(
                host, port, ssl_context=ssl.create_default_context(), https_compatible=True)
        else:
            stream = await trio.open_tcp_stream(host, port)
    async with stream, trio.open_nursery() as nursery:
        with trio.fail_after(CONNECT_TIMEOUT):
            ws = await wrap_client_stream(
                nursery, stream, parts.netloc, resource, max_message_size=max_message_size,
                receive_buffer_size=RECEIVE_BUFFER, message_queue_size=4,
            )
        try:
            yield ws
        finally:
            with trio.move_on_after(2):  # not shielded: when cancelled, just drop the stream
                await ws.aclose()
            nursery.cancel_scope.cancel()


class PeerLink:
    """The outgoing link from this node to one peer node.

    Args:
        node_id: this node's id.
        signing_key: this node's Ed25519 key.
        ring: the cluster (ring version and the peer's public key).
        peer: the destination node.
        limits: the cluster's size budget (client-level limits); the link carries
            frames up to ``limits.max_peer_frame`` and refuses a peer whose
            budget differs (docs/protocol.md, "Size budget").
        log: where to log link state changes.
    """

    def __init__(
        self, node_id: str, signing_key: nacl.signing.SigningKey, ring: Ring, peer: NodeInfo,
        limits: Limits, log: logging.Logger,
    ) -> None:
        self.peer = peer
        self._node_id = node_id
        self._key = signing_key
        self._ring = ring
        self._budget = limits
        self._limits = limits.for_peers()
        self._log = log
        self._ws: WebSocketConnection | None = None
        self._ids = itertools.count(1)
        self._pending: dict[int, list] = {}  # id -> [event, answer frame or None]
        self._changed = trio.Event()  # set after every connect attempt and disconnect
        self._kick = trio.Event()
        self.connected = trio.Event()  # set while the link is up (replaced when it goes down)

    @property
    def is_up(self) -> bool:
        """True while the link is authenticated and open."""
        return self._ws is not None

    def kick(self) -> None:
        """Reconnect now instead of waiting out the current backoff delay."""
        self._kick.set()

    def _signal_change(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def request(self, frame: Frame) -> Frame:
        """Send ``frame`` (its id is replaced) and return the peer's answer frame.

        If the link is down, one connection attempt is made first. The caller
        owns the timeout (``trio.move_on_after``); a cancelled request leaves
        the link usable.

        Raises:
            LinkDown: unreachable, or the link broke before the answer.
            RelayError: ``too_large``: the frame exceeds the peer frame limit
                (it could never be carried; nothing was sent).
        """
        rid = next(self._ids)
        data = write_frame(dataclasses.replace(frame, id=rid))
        if len(data) > self._limits.max_frame:
            raise RelayError(ErrorCode.TOO_LARGE,
                             f"a {frame.TYPE} of {len(data)} bytes exceeds the node-to-node "
                             f"frame limit of {self._limits.max_frame} bytes")
        if self._ws is None:
            changed = self._changed
            self.kick()
            await changed.wait()
        ws = self._ws
        if ws is None:
            raise LinkDown(f"node {self.peer.id} is unreachable")
        slot: list = [trio.Event(), None]
        self._pending[rid] = slot
        try:
            try:
                await ws.send_message(data)
            except ConnectionClosed as exc:
                raise LinkDown(f"link to {self.peer.id} closed") from exc
            await slot[0].wait()
        finally:
            del self._pending[rid]
        if slot[1] is None:
            raise LinkDown(f"link to {self.peer.id} broke before the answer")
        return slot[1]

    async def run(self) -> None:
        """Keep the link up until cancelled (connect, serve, back off, repeat)."""
        delays = backoff_delays()
        down_since, warned = trio.current_time(), False
        while True:
            try:
                async with open_link_websocket(self.peer.url, self._limits.max_frame + 4096) as ws:
                    with trio.fail_after(CONNECT_TIMEOUT):
                        await self._handshake(ws)
                    self._ws = ws
                    self.connected.set()
                    self._signal_change()
                    self._log.info("peer link to %s up", self.peer.id)
                    delays = backoff_delays()
                    await self._read_answers(ws)
            except* _LinkError as group:
                self._log.warning("peer link to %s: %s", self.peer.id, _leaf(group))
            except* (OSError, HandshakeError, ConnectionClosed, trio.TooSlowError) as group:
                why = _describe(group)
                if self._ws is not None:  # it was up
                    self._log.warning("peer link to %s down: %s; reconnecting", self.peer.id, why)
                    down_since, warned = trio.current_time(), False
                elif not warned and trio.current_time() - down_since >= UNREACHABLE_WARNING:
                    self._log.warning("peer %s unreachable for %.0f s (%s); still retrying",
                                      self.peer.id, trio.current_time() - down_since, why)
                    warned = True
                else:
                    self._log.debug("peer link to %s: attempt failed: %s", self.peer.id, why)
            finally:
                if self._ws is not None:
                    down_since, warned = trio.current_time(), False
                self._go_down()
            self._kick = trio.Event()
            with trio.move_on_after(next(delays)):
                await self._kick.wait()

    def _go_down(self) -> None:
        was_up = self._ws is not None
        self._ws = None
        if was_up:
            self.connected = trio.Event()
        for slot in self._pending.values():
            slot[0].set()  # answer stays None: LinkDown
        self._signal_change()

    async def _receive(self, ws: WebSocketConnection) -> Frame:
        try:
            return read_frame(await ws.get_message(), self._limits)
        except RemoteProtocolError as exc:
            raise _LinkError(f"invalid frame from peer: {exc}") from exc

    async def _handshake(self, ws: WebSocketConnection) -> None:
        await ws.send_message(write_frame(Hello(id=1, versions=list(SUPPORTED_VERSIONS), role="peer",
                                                agent=f"wa-relay/{self._node_id}")))
        ch = await self._receive(ws)
        if isinstance(ch, Error):
            raise _LinkError(f"hello refused: {ch.code} {ch.message}")
        if not isinstance(ch, Challenge) or ch.node_id != self.peer.id or len(ch.nonce) != 32:
            raise _LinkError("unexpected challenge (wrong node id or frame)")
        if ch.ring_version != self._ring.version:
            raise _LinkError("ring version differs: the nodes read different cluster files")
        if (ch.max_frame, ch.max_envelope) != (self._budget.max_frame, self._budget.max_envelope):
            raise _LinkError(
                f"size budget differs: peer max_frame={ch.max_frame} max_envelope="
                f"{ch.max_envelope}, ours {self._budget.max_frame}/{self._budget.max_envelope}")
        my_nonce = os.urandom(32)
        sig = self._key.sign(
            peer_auth_message(ch.nonce, self._node_id, self.peer.id, self._ring.version)
        ).signature
        await ws.send_message(write_frame(PeerAuth(id=2, node_id=self._node_id, signature=sig,
                                                   nonce=my_nonce)))
        ok = await self._receive(ws)
        if isinstance(ok, Error):
            raise _LinkError(f"peer_auth refused: {ok.code} {ok.message}")
        expected = peer_auth_message(my_nonce, self.peer.id, self._node_id, self._ring.version)
        if not isinstance(ok, PeerAuthOk) or not verify_signature(
            self.peer.public_key, expected, ok.signature
        ):
            raise _LinkError("peer_auth_ok signature does not verify")

    async def _read_answers(self, ws: WebSocketConnection) -> None:
        while True:
            frame = await self._receive(ws)
            slot = self._pending.get(frame.id)
            if slot is not None and slot[1] is None:
                slot[1] = frame
                slot[0].set()


def _leaf(exc: BaseException) -> BaseException:
    """The first leaf exception of a (possibly nested) exception group."""
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    return exc


def _describe(exc: BaseException) -> str:
    """``"ConnectionRefusedError: [Errno 111] Connect call failed ..."`` (one line;
    the first leaf of an exception group)."""
    exc = _leaf(exc)
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


async def request_within(federation: Federation, dest: str, frame: Frame, seconds: float) -> Frame:
    """:meth:`Federation.request` bounded by ``seconds``; a timeout raises :class:`LinkDown`."""
    with trio.move_on_after(seconds):
        return await federation.request(dest, frame)
    raise LinkDown(f"no answer from {dest} within {seconds} s")


F = TypeVar("F", bound=Frame)


async def ask_peer(
    federation: Federation, dest: str, frame: Frame, expected: type[F], seconds: float, *,
    holder: str,
) -> F:
    """Serve a read by asking node ``dest``: its answer of type ``expected``, with
    the request id of ``frame`` (the client's id goes back to the client).

    Args:
        holder: what ``dest`` is to this request, for the ``unavailable`` message
            (e.g. ``"home node"``, ``"node holding the media"``).

    Raises:
        RelayError: ``unavailable`` (unreachable, or no answer within ``seconds``),
            the peer's own refusal (its ``error`` frame), ``internal`` (an
            answer of another type).
    """
    try:
        answer = await request_within(federation, dest, frame, seconds)
    except LinkDown as exc:
        raise RelayError(ErrorCode.UNAVAILABLE, f"{holder} {dest} is unreachable") from exc
    if isinstance(answer, Error):
        raise RelayError.from_frame(answer)
    if not isinstance(answer, expected):
        raise RelayError(ErrorCode.INTERNAL, f"unexpected answer {answer.TYPE!r} from {dest}")
    return dataclasses.replace(answer, id=frame.id)


class Federation:
    """All outgoing peer links of one node.

    Args:
        node_id, signing_key, ring, limits, log: see :class:`PeerLink`.
    """

    def __init__(
        self, node_id: str, signing_key: nacl.signing.SigningKey, ring: Ring, limits: Limits,
        log: logging.Logger,
    ) -> None:
        self.links: dict[str, PeerLink] = {
            n.id: PeerLink(node_id, signing_key, ring, n, limits, log)
            for n in ring.nodes if n.id != node_id
        }

    async def run(self) -> None:
        """Run every link until cancelled."""
        async with trio.open_nursery() as nursery:
            for link in self.links.values():
                nursery.start_soon(link.run)

    async def request(self, dest: str, frame: Frame) -> Frame:
        """Send a request to node ``dest`` and return its answer.

        Raises:
            LinkDown: see :meth:`PeerLink.request`.
            KeyError: ``dest`` is not a peer of this node.
        """
        return await self.links[dest].request(frame)

    def kick(self, dest: str) -> None:
        """Reconnect to ``dest`` now (e.g. it just connected to us, so it is back)."""
        link = self.links.get(dest)
        if link is not None and not link.is_up:
            link.kick()
