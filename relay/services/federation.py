"""Node-to-node links: one outgoing, mutually authenticated WebSocket per peer node.

Handshake on a link from node A to node B (docs/protocol.md, "Peer")::

    A -> B  hello {versions: [1], role: "peer"}
    B -> A  challenge {node_id: B, ring_version, nonce_b}        (A checks both)
    A -> B  peer_auth {node_id: A, signature_A(peer_auth_message(nonce_b, A, B, rv)), nonce_a}
    B -> A  peer_auth_ok {signature_B(peer_auth_message(nonce_a, B, A, rv))}   (A verifies)

The link is a :mod:`relay.net` link (:func:`relay.net.open_peer_connection` runs
the handshake above with the sans-I/O :class:`relay.protocol.handshake.Handshake`).
Requests (``forward``, ``get_devices``, ``claim_keys``) are multiplexed over
the link by request id; the accepting node may answer them out of order. The
link pings after 20 s of silence and is closed when nothing arrives 10 s later
(a black-holed peer is noticed). A broken link fails its pending requests with
:class:`LinkDown` and reconnects with exponential backoff (0.2 s doubling to a
30 s cap, +-25 % jitter; it starts again from 0.2 s only after a link that stayed up
for :data:`STABLE_LINK` seconds, so a link the peer drops at once is not reopened in a
loop); a request made while the link is down triggers one immediate attempt.

Logging: one info line when a link comes up, one warning when a link that was
up goes down; failed attempts while a peer is down are debug lines (at start-up
the peers are usually still starting), except one warning once a peer has been
unreachable for :data:`UNREACHABLE_WARNING` seconds. A peer that refuses the
handshake (another ring version, a bad signature) is a warning every time.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import TypeVar

import nacl.signing
import trio

import relay.net as net
from relay.config.ring import NodeInfo, Ring
from relay.errors import RelayError
from relay.net.backoff import PEER_BACKOFF
from relay.protocol import ErrorCode, Limits, write_frame
from relay.protocol.frames import Error, Frame

CONNECT_TIMEOUT = 5.0
CLOSE_GOING_AWAY = 1001  # RFC 6455 7.4.1: an endpoint is going away
UNREACHABLE_WARNING = 60.0  # seconds a peer may stay unreachable before a warning
STABLE_LINK = 2.0
"""Seconds a link must have stayed up for the backoff to start again from its first
delay when it goes down; a link that drops sooner (a peer that closes it at once,
a flapping path) keeps backing off, so it is not reconnected in a loop."""

PEER_LINK_SETTINGS = dataclasses.replace(net.PEER_SETTINGS, connect_timeout=CONNECT_TIMEOUT)
"""The settings of every outgoing peer link (:data:`relay.net.PEER_SETTINGS`: keepalive
ping after 20 s of silence, 10 s to answer; callers own request timeouts)."""


class LinkDown(Exception):
    """The peer node could not be reached, or the link broke before the answer came."""


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
        settings: the link's settings (default :data:`PEER_LINK_SETTINGS`).
    """

    def __init__(
        self, node_id: str, signing_key: nacl.signing.SigningKey, ring: Ring, peer: NodeInfo,
        limits: Limits, log: logging.Logger, settings: net.LinkSettings = PEER_LINK_SETTINGS,
    ) -> None:
        self.peer = peer
        self._node_id = node_id
        self._key = signing_key
        self._ring = ring
        self._budget = limits
        self._max_frame = limits.max_peer_frame
        self._settings = settings
        self._log = log
        self._link: net.Link | None = None
        self._changed = trio.Event()  # set after every connect attempt and disconnect
        self._kick = trio.Event()
        self._leaving = False  # set by go_away(): the node stops, do not reconnect
        self.connected = trio.Event()  # set while the link is up (replaced when it goes down)
        self._address = 0  # index in peer.urls of the address in use
        self._tried = 0  # addresses that failed in a row since the last link

    @property
    def is_up(self) -> bool:
        """True while the link is authenticated and open."""
        return self._link is not None and not self._link.is_closed

    def kick(self) -> None:
        """Reconnect now instead of waiting out the current backoff delay."""
        self._kick.set()

    async def go_away(self) -> None:
        """The node is stopping: close the link with 1001 (going away, RFC 6455) so the
        peer sees a clean close instead of 1006, and do not reconnect afterwards."""
        self._leaving = True
        self._kick.set()
        if self._link is not None:
            await self._link.aclose(CLOSE_GOING_AWAY, "node stopping")

    def _signal_change(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    def _too_large(self, frame: Frame, size: int) -> RelayError:
        return RelayError(ErrorCode.TOO_LARGE,
                          f"a {frame.TYPE} of {size} bytes exceeds the node-to-node "
                          f"frame limit of {self._max_frame} bytes")

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
        if not self.is_up:
            size = len(write_frame(frame))  # refuse before waiting for a link (only when down)
            if size > self._max_frame:
                raise self._too_large(frame, size)
            changed = self._changed
            self.kick()
            await changed.wait()
        link = self._link
        if link is None:
            raise LinkDown(f"node {self.peer.id} is unreachable")
        try:
            return await link.request(frame, timeout=None)
        except net.FrameTooLarge as exc:
            raise self._too_large(frame, exc.size) from None
        except net.ConnectionLost as exc:
            raise LinkDown(f"link to {self.peer.id} broke before the answer ({exc})") from exc

    @property
    def url(self) -> str:
        """The peer address the link uses (or tries next)."""
        return self.peer.urls[self._address]

    def _next_address(self) -> bool:
        """Move to the peer's next address; True if one is left in this round (the
        round restarts after a full cycle, then the backoff applies)."""
        if len(self.peer.urls) == 1:
            return False
        self._address = (self._address + 1) % len(self.peer.urls)
        self._tried += 1
        if self._tried < len(self.peer.urls):
            return True
        self._tried = 0
        return False

    def _open(self):
        return net.open_peer_connection(
            self.url, node_id=self._node_id, sign=lambda m: self._key.sign(m).signature,
            peer_id=self.peer.id, peer_key=self.peer.public_key, ring_version=self._ring.version,
            budget=self._budget, settings=self._settings)

    async def run(self) -> None:
        """Keep the link up until cancelled (connect, serve, back off, repeat). A peer
        with several addresses (processes of one node): a failed address, or a link
        that went down, moves to the next one at once; the backoff applies once
        every address failed in a row."""
        delays = PEER_BACKOFF.delays()
        down_since, warned = trio.current_time(), False
        while True:
            retry_now = False
            try:
                async with self._open() as link:
                    self._link = link
                    self._tried = 0
                    self.connected.set()
                    self._signal_change()
                    self._log.info("peer link to %s up%s", self.peer.id,
                                   f" ({self.url})" if len(self.peer.urls) > 1 else "")
                    up_at = trio.current_time()
                    await link.wait_closed()
                if trio.current_time() - up_at >= STABLE_LINK:
                    delays = PEER_BACKOFF.delays()
                if self._leaving:  # our own going-away close: nothing to report
                    self._log.info("peer link to %s closed: this node is stopping",
                                   self.peer.id)
                else:
                    self._log.warning("peer link to %s down: %s; reconnecting", self.peer.id,
                                      link.close_reason)
                down_since, warned = trio.current_time(), False
                retry_now = self._next_address()
            except (net.HandshakeFailed, net.Refused) as exc:
                self._log.warning("peer link to %s: %s", self.peer.id, exc)
            except net.ConnectFailed as exc:
                if not warned and trio.current_time() - down_since >= UNREACHABLE_WARNING:
                    self._log.warning("peer %s unreachable for %.0f s (%s); still retrying",
                                      self.peer.id, trio.current_time() - down_since, exc)
                    warned = True
                else:
                    self._log.debug("peer link to %s: attempt failed: %s", self.peer.id, exc)
                retry_now = self._next_address()
            except Exception:  # noqa: BLE001 - the per-link boundary: log, back off, retry
                # Anything else from one link (a trio-websocket quirk that whatever
                # listens at the peer's address can trigger) must not stop the node.
                self._log.exception("peer link to %s (%s): unexpected error", self.peer.id,
                                    self.url)
            finally:
                self._go_down()
            if self._leaving:
                await trio.sleep_forever()  # until the node's nursery is cancelled
            self._kick = trio.Event()
            if retry_now:
                continue
            with trio.move_on_after(next(delays)):
                await self._kick.wait()

    def _go_down(self) -> None:
        was_up = self._link is not None
        self._link = None
        if was_up:
            self.connected = trio.Event()
        self._signal_change()


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


def peer_link_settings(keepalive_interval: float, keepalive_timeout: float) -> net.LinkSettings:
    """:data:`PEER_LINK_SETTINGS` with the node's keepalive (config ``keepalive_interval``
    and ``keepalive_timeout``, seconds; interval 0: no pings).

    Raises:
        ValueError: a negative interval or a timeout that is not positive.
    """
    if keepalive_interval < 0 or not keepalive_timeout > 0:
        raise ValueError(f"bad keepalive {keepalive_interval}/{keepalive_timeout} s")
    return dataclasses.replace(
        PEER_LINK_SETTINGS, keepalive=net.KeepaliveConfig(keepalive_interval, keepalive_timeout))


class Federation:
    """All outgoing peer links of one node.

    Args:
        node_id, signing_key, ring, limits, log: see :class:`PeerLink`.
        settings: the settings of every link (:func:`peer_link_settings`).
    """

    def __init__(
        self, node_id: str, signing_key: nacl.signing.SigningKey, ring: Ring, limits: Limits,
        log: logging.Logger, settings: net.LinkSettings = PEER_LINK_SETTINGS,
    ) -> None:
        self.links: dict[str, PeerLink] = {
            n.id: PeerLink(node_id, signing_key, ring, n, limits, log, settings)
            for n in ring.nodes if n.id != node_id
        }

    async def run(self) -> None:
        """Run every link until cancelled."""
        async with trio.open_nursery() as nursery:
            for link in self.links.values():
                nursery.start_soon(link.run)

    async def go_away(self) -> None:
        """Close every peer link with 1001 (the node is stopping); see :meth:`PeerLink.go_away`."""
        async with trio.open_nursery() as nursery:
            for link in self.links.values():
                nursery.start_soon(link.go_away)

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
