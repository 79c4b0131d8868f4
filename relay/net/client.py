"""The connecting side's handshakes over a :class:`~relay.net.link.Link`: a device
(``hello`` -> ``challenge`` -> [pre-auth requests] -> ``auth``), a linking device (the
same without ``auth``) and a node's outgoing peer link (``hello`` -> ``challenge`` ->
``peer_auth`` -> ``peer_auth_ok``). The frames and their checks are the sans-I/O
:class:`~relay.protocol.handshake.Handshake`; the handshake requests travel over the
link like any other request (same reader, writer and keepalive).

Node identity (docs/protocol.md, "Cluster pinning"): a client that pinned the
cluster passes its :class:`~relay.protocol.cluster.PinnedCluster`; the node's
challenge must then be signed by a node of that description (the one at ``url``, if
the URL is listed) over this connection's channel binding, else the connection is
refused before anything is sent. A node announcing a newer description gets asked
for it (``get_cluster``): it replaces the pin only if the same cluster key signed
it (``link.cluster`` holds the pin the link was checked against). Without a pin
(first contact), :func:`fetch_cluster` gets the description and checks the node
against it.

Usage (a device)::

    async with open_client_connection(url, agent="wa-cli/0.1", cluster=pin) as link:
        link.handshake.challenge            # node id, size budget
        await link.request(PutDevices(...)) # allowed before auth
        ok = await authenticate(link, user_id, device_id, sign)
        answer = await link.request(GetDevices(id=0, user_id=...))
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import replace

from relay.protocol import DEFAULT_LIMITS, ErrorCode, Limits, RemoteProtocolError
from relay.protocol.cluster import PinnedCluster, SignedCluster
from relay.protocol.frames import AuthOk, ClusterInfo, Error, Frame, GetCluster
from relay.protocol.handshake import Handshake, HandshakeRefused, Signer

from .errors import ConnectFailed, ConnectionLost, HandshakeFailed, Refused, RequestTimeout
from .link import DEFAULT_SETTINGS, Link, LinkSettings, open_link

__all__ = ["PEER_SETTINGS", "authenticate", "fetch_cluster", "handshake_step",
           "open_client_connection", "open_peer_connection"]

PEER_SETTINGS = LinkSettings(connect_timeout=5.0, request_timeout=None, push_buffer=0,
                             message_queue=4, strict=True, shield_close=False)
"""Defaults of a node's outgoing peer link: callers own request timeouts, no pushes
expected, an invalid frame closes the link, a stopping node does not wait for goodbyes.
``max_message`` is set from the cluster's budget by :func:`open_peer_connection`."""


async def handshake_step(link: Link, frame: Frame, check: Callable[[Frame], Frame]) -> Frame:
    """Send one handshake request over ``link`` and return ``check(answer)``, within
    ``link.settings.connect_timeout`` seconds.

    Raises:
        ConnectFailed: no answer in time, or the link ended.
        Refused: the answer is ``error`` (``.frame``: ``moved`` and its ``url``, ...).
        HandshakeFailed: the answer is wrong (``check`` raised ``RemoteProtocolError``).
    """
    limit = link.settings.connect_timeout
    try:
        return check(await link.request(frame, timeout=limit))
    except RequestTimeout as exc:
        raise ConnectFailed(f"handshake with {link.url} timed out after {limit:g}s") from exc
    except ConnectionLost as exc:
        raise ConnectFailed(f"{exc} during the handshake") from exc
    except HandshakeRefused as exc:
        raise Refused(f"{link.url}: {exc.message}", exc.frame) from exc
    except RemoteProtocolError as exc:
        raise HandshakeFailed(f"{link.url}: {exc.message}") from exc


async def _hello(link: Link, handshake: Handshake) -> None:
    link.handshake = handshake
    await handshake_step(link, handshake.hello(), handshake.receive_challenge)


def _cluster_answer(frame: Frame) -> Frame:
    if isinstance(frame, Error):
        raise RemoteProtocolError(ErrorCode.NOT_FOUND,
                                  f"the node serves no signed cluster description ({frame.code})")
    if not isinstance(frame, ClusterInfo):
        raise RemoteProtocolError(ErrorCode.BAD_FRAME, f"unexpected answer to get_cluster: "
                                                       f"{frame.TYPE}")
    return frame


async def fetch_cluster(link: Link, cluster_key: bytes | None) -> PinnedCluster:
    """Ask the node for its signed cluster description (``get_cluster``), check it is
    signed by ``cluster_key`` (``None``: by the key it carries, trust on first use), and
    check the node's challenge against it (:meth:`Handshake.verify_node`); the link's
    :attr:`cluster` is set to it.

    Raises:
        HandshakeFailed: no description, another cluster key, a bad signature, or a
            node that is not in it or did not sign its challenge for this connection.
        ConnectFailed: as :func:`handshake_step`.
    """
    answer = await handshake_step(link, GetCluster(id=0), _cluster_answer)
    assert isinstance(answer, ClusterInfo)
    signed = SignedCluster(answer.body, answer.signature, answer.cluster_key)
    handshake: Handshake = link.handshake
    try:
        pin = PinnedCluster.verify(signed, cluster_key)
        if handshake.expect_node_id is None:
            at = pin.description.node_at(link.url)
            handshake.expect_node_id = at.id if at is not None else None
        handshake.verify_node(pin.description)
    except RemoteProtocolError as exc:
        raise HandshakeFailed(f"{link.url}: {exc.message}") from exc
    link.cluster = pin
    return pin


async def _check_node(link: Link, handshake: Handshake, pin: PinnedCluster) -> None:
    """Check the challenge against ``pin`` (or a newer description the node serves)."""
    ch = handshake.challenge
    assert ch is not None
    if ch.cluster_version is not None and ch.cluster_version > pin.version:
        answer = await handshake_step(link, GetCluster(id=0), _cluster_answer)
        assert isinstance(answer, ClusterInfo)
        try:
            pin = pin.newer(SignedCluster(answer.body, answer.signature, answer.cluster_key))
        except RemoteProtocolError as exc:
            raise HandshakeFailed(f"{link.url}: {exc.message}") from exc
    if handshake.expect_node_id is None:
        at = pin.description.node_at(link.url)
        handshake.expect_node_id = at.id if at is not None else None
    try:
        handshake.verify_node(pin.description)
    except RemoteProtocolError as exc:
        raise HandshakeFailed(f"{link.url}: {exc.message}") from exc
    link.cluster = pin


@asynccontextmanager
async def open_client_connection(
    url: str, *, agent: str, settings: LinkSettings = DEFAULT_SETTINGS,
    limits: Limits = DEFAULT_LIMITS, expect_node_id: str | None = None,
    cluster: PinnedCluster | None = None,
) -> AsyncIterator[Link]:
    """Connect to a node as a client (a device or a linking device) and yield the link
    once the node's ``challenge`` is accepted; on exit the link closes.

    The link is not authenticated yet: send pre-auth requests (``put_devices``,
    ``link_open``, ``ping``) or :func:`authenticate`. ``link.handshake.challenge``
    holds the node's id and nonce; ``link.max_send`` is set from its size budget.

    Args:
        agent: sent in ``hello`` (e.g. ``"wa-cli/0.1"``).
        settings: timeouts, keepalive, window, buffers (:class:`LinkSettings`).
        limits: decoding limits for what the node sends.
        expect_node_id: refuse a node announcing another id (default with ``cluster``:
            the node listed at ``url``, if any).
        cluster: the pinned cluster: the node must be in it and have signed its
            challenge for this connection (see the module docstring); ``link.cluster``
            is the pin it was checked against (newer than ``cluster`` if the node
            served a newer one). ``None``: the node is not checked. A size budget
            in it larger than the defaults raises what the link accepts.

    Raises:
        ConnectFailed: unreachable, plain ``ws://`` to a host that is not loopback,
            refused at the WebSocket handshake, timed out, closed.
        HandshakeFailed: a wrong answer to ``hello``; with ``cluster``, a node that is
            not in the pinned cluster or whose challenge does not verify.
        Refused: ``error`` answering ``hello`` (``unsupported_version``).
    """
    if cluster is not None:
        settings, limits = _fit_budget(cluster, settings, limits)
    async with open_link(url, settings=settings, limits=limits) as link:
        handshake = Handshake("client", agent, expect_node_id=expect_node_id,
                              binding=link.socket.binding)
        await _hello(link, handshake)
        link.max_send = handshake.limits.max_frame
        if cluster is not None:
            await _check_node(link, handshake, cluster)
        yield link


def _fit_budget(cluster: PinnedCluster, settings: LinkSettings,
                limits: Limits) -> tuple[LinkSettings, Limits]:
    """``settings`` and ``limits`` raised, where the pinned cluster's size budget is
    larger, so that every frame a node of it may send (a ``deliver`` of up to its
    ``max_frame``) is accepted. The WebSocket's message limit is fixed when it opens,
    so it comes from the pin: a budget raised since is taken from the next connection
    on (the pin is renewed by the handshake)."""
    d = cluster.description
    budget = Limits.for_node(d.max_frame, d.max_envelope or None)
    if budget.max_frame > limits.max_frame:
        limits = replace(limits, max_frame=budget.max_frame,
                         max_envelope=max(limits.max_envelope, budget.max_envelope),
                         max_bin=max(limits.max_bin, budget.max_bin))
    return replace(settings, max_message=max(settings.max_message,
                                             budget.max_peer_frame)), limits


async def authenticate(link: Link, user_id: str, device_id: int, sign: Signer) -> AuthOk:
    """Authenticate a device on a link from :func:`open_client_connection`.

    Args:
        sign: signs with the device's Ed25519 key; returns the 64-byte signature.

    Returns:
        The node's ``auth_ok`` (``otk_count``).

    Raises:
        Refused: ``moved`` (``.frame.url``: the user's home), ``unknown_device``,
            ``unknown_user``, ``unauthorized``.
        ConnectFailed, HandshakeFailed: as :func:`handshake_step`.
    """
    handshake: Handshake = link.handshake
    answer = await handshake_step(link, handshake.auth(user_id, device_id, sign),
                                  handshake.receive_auth_ok)
    assert isinstance(answer, AuthOk)
    return answer


@asynccontextmanager
async def open_peer_connection(
    url: str, *, node_id: str, sign: Signer, peer_id: str, peer_key: bytes,
    ring_version: str, budget: Limits, settings: LinkSettings = PEER_SETTINGS,
) -> AsyncIterator[Link]:
    """Open this node's outgoing link to node ``peer_id`` and authenticate both ways;
    yield the link (requests only: ``forward``, ``get_devices``, ...); on exit it closes.

    Args:
        node_id, sign: this node's id and a signer with its node key.
        peer_id, peer_key: the other node's id and 32-byte public key (cluster file).
        ring_version: both nodes must read the same cluster file.
        budget: the cluster's size budget (client-level :class:`Limits`); the other
            node must announce the same, and the link carries frames up to
            ``budget.max_peer_frame``.
        settings: default :data:`PEER_SETTINGS`.

    Raises:
        ConnectFailed: unreachable, timed out, closed.
        HandshakeFailed: another node id, ring version or budget; a bad signature.
        Refused: the other node answered ``error`` (it does not know our key, ...).
    """
    peer_limits = budget.for_peers()
    settings = replace(settings, max_message=peer_limits.max_frame + 4096)
    async with open_link(url, settings=settings, limits=peer_limits) as link:
        handshake = Handshake("peer", f"wa-relay/{node_id}", expect_node_id=peer_id,
                              ring_version=ring_version, budget=budget, peer_key=peer_key,
                              binding=link.socket.binding)
        await _hello(link, handshake)
        await handshake_step(link, handshake.peer_auth(node_id, sign, os.urandom(32)),
                             handshake.receive_peer_auth_ok)
        link.max_send = peer_limits.max_frame
        yield link
