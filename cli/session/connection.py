"""One authenticated connection from a device to its home node (docs/protocol.md, "Handshake").

:func:`open_connection` opens a link with :mod:`relay.net` (the one connection layer:
owned socket, a reader that always drains it, a bounded writer, pipelined requests
with a deadline each, keepalive pings), publishes the device's own signed device list
if the home does not have it yet, authenticates (``auth``) and follows ``error
moved`` to the user's home. The yielded
:class:`Connection` translates the link's errors into the client's
(:mod:`cli.errors`) and checks every request against the node's size budget before
it leaves (``check_budget``).

Cluster pinning (docs/protocol.md, "Cluster pinning"): every node reached must be in
the state's pinned cluster description and have signed its challenge for this
connection (:func:`relay.net.open_client_connection`); a newer description signed by
the same cluster key replaces the pin. ``moved`` is followed only to a node of the
description, and the new home URL is saved only once ``auth`` succeeded there. A
state without a pin (made by the library API, or before pinning existed) pins the
description of the first node it reaches, trust on first use, with a warning;
``wa-cli init`` and ``link`` pin before connecting (:func:`pin_cluster`).

Pushes: ``key_count`` goes to :attr:`Connection.on_key_count`; ``deliver``,
``synced`` and ``error`` (id 0, or ending the ``sync`` stream) to the bounded
:attr:`Connection.pushes` channel, which ends when the connection does.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import replace

import trio

import relay.net as net
from cli.errors import (
    ClientError,
    ConnectionFailed,
    ConnectionLost,
    DeviceRemoved,
    NoAnswer,
    RelayError,
)
from cli.session.sendorder import SendOrder
from cli.session.state import State
from relay.protocol import ErrorCode, RemoteProtocolError
from relay.protocol import frames as wire
from relay.protocol.cluster import PinnedCluster
from relay.protocol.frames import AuthOk, Error, Frame, KeyCount, PutDevices, check_budget

__all__ = ["AGENT", "ANSWERS", "CLIENT_SETTINGS", "Connection", "client_settings", "fetch_pin",
           "open_connection", "pin_cluster"]

log = logging.getLogger(__name__)

AGENT = "wa-cli/0.1"
MAX_MOVES = 3
PUSH_BUFFER = 1024  # > the node's 256 unacknowledged deliveries in flight per connection
REQUEST_TIMEOUT = 30.0  # seconds; above every deadline a node uses inside one request (<= 10 s)

ANSWERS: dict[type[Frame], type[Frame]] = {
    wire.PutDevices: wire.Ok, wire.GetDevices: wire.Devices, wire.UploadKeys: wire.KeyCount,
    wire.ClaimKeys: wire.Claimed, wire.Send: wire.Sent, wire.GroupSend: wire.Sent,
    wire.LinkFetch: wire.LinkInfo, wire.LinkComplete: wire.Ok,
    wire.MediaStatus: wire.MediaProgress, wire.MediaUpload: wire.MediaProgress,
    wire.MediaDownload: wire.MediaChunk,
}
"""The answer each request of a device gets besides ``error`` (docs/protocol.md); any
other frame under the request's id is a broken or hostile relay: :class:`NoAnswer`."""

CLIENT_SETTINGS = net.LinkSettings(request_timeout=REQUEST_TIMEOUT, push_buffer=PUSH_BUFFER)
"""The link settings of a device connection: keepalive ping after 20 s of silence,
10 s to answer it; 30 s per request."""


def client_settings(*, keepalive: float = 20.0, keepalive_timeout: float = 10.0,
                    request_timeout: float = REQUEST_TIMEOUT) -> net.LinkSettings:
    """:data:`CLIENT_SETTINGS` with other times (seconds; ``keepalive`` 0 disables pings).

    Raises:
        ValueError: a negative interval, a timeout that is not positive.
    """
    if not request_timeout > 0:
        raise ValueError(f"the request timeout must be > 0 seconds, not {request_timeout}")
    return replace(CLIENT_SETTINGS, request_timeout=request_timeout,
                   keepalive=net.KeepaliveConfig(keepalive, keepalive_timeout))


def _lost(exc: net.ConnectionLost | net.RequestTimeout, what: str) -> ConnectionLost:
    """The client's error for a request that got no answer: :class:`NoAnswer` once the
    frame had left (the node may have acted on it), else :class:`ConnectionLost`."""
    if exc.sent:
        return NoAnswer(f"no answer to {what}: {exc}")
    return ConnectionLost(str(exc))


class Connection:
    """An authenticated connection. Create with :func:`open_connection`.

    Methods may be called from several tasks at once.

    Attributes:
        url: the home node's WebSocket URL.
        node_id: the home node's id (from its challenge).
        otk_count: one-time keys the node held for this device at ``auth_ok``.
        limits: the node's size budget (from its challenge).
        pushes: receive side of the bounded push channel (``Deliver``,
            ``Synced``, unsolicited ``Error``); closed when the connection ends.
        on_key_count: called with the count of each ``key_count`` push.
    """

    def __init__(self, link: net.Link, otk_count: int) -> None:
        handshake = link.handshake
        assert handshake is not None and handshake.challenge is not None
        self._link = link
        self.url = link.url
        self.node_id = handshake.challenge.node_id
        self.otk_count = otk_count
        self.limits = handshake.limits
        self.pushes = link.pushes
        self.on_key_count: Callable[[int], None] = lambda count: None
        link.intercept = self._intercept

    def _intercept(self, frame: Frame) -> bool:
        if isinstance(frame, KeyCount):
            self.on_key_count(frame.otk_count)
            return True
        return False

    @property
    def link(self) -> net.Link:
        """The underlying :class:`relay.net.Link`."""
        return self._link

    def lost(self) -> ConnectionLost:
        """A new :class:`ConnectionLost` saying why the connection ended (who closed it,
        the WebSocket close code, or the keepalive giving up), for callers that notice
        the end on :attr:`pushes`."""
        return ConnectionLost(str(self._link.lost()))

    async def request(
        self, frame_cls: type[Frame], *, place: tuple[SendOrder, int] | None = None, **fields
    ) -> Frame:
        """Send a request and wait for its answer, at most the link's request timeout
        (30 s by default).

        Args:
            place: ``(order, place)``: write the frame only at that place's turn in
                ``order`` (:class:`cli.sendorder.SendOrder`), and mark the place done
                once queued for writing (frames leave in that order), or on any
                failure or cancellation before that.
            fields: the frame's fields (not ``id``).

        Returns:
            The answer frame (never an ``Error``), of the type :data:`ANSWERS` names.

        Raises:
            RelayError: the node answered ``error``; or ``too_large`` before sending
                (the node's size budget).
            NoAnswer: the frame left but no answer came (connection lost, keepalive
                overdue, or deadline), or a frame of another type came under its id
                (a broken or hostile relay): the node may have acted on it.
            ConnectionLost: the connection ended before the frame left.
        """
        frame = frame_cls(id=0, **fields)
        order, turn = place if place is not None else (None, 0)
        try:
            try:
                check_budget(frame, self.limits)
            except RemoteProtocolError as exc:  # refused before sending, like the node would
                raise RelayError(Error(id=0, code=exc.code.value,
                                       message=f"{exc.message} (not sent)")) from None
            if order is not None:
                await order.wait_turn(turn)
            answer = await self._link.request(
                frame, on_queued=None if order is None else (lambda: order.done(turn)))
        except net.FrameTooLarge as exc:
            raise RelayError(Error(id=0, code=ErrorCode.TOO_LARGE.value,
                                   message=f"{exc} (not sent)")) from None
        except (net.ConnectionLost, net.RequestTimeout) as exc:
            raise _lost(exc, frame.TYPE) from exc
        finally:
            if order is not None:
                order.done(turn)
        if isinstance(answer, Error):
            raise RelayError(answer)
        expected = ANSWERS.get(frame_cls)
        if expected is not None and not isinstance(answer, expected):
            raise NoAnswer(f"no answer to {frame.TYPE}: {self.url} answered with "
                           f"{answer.TYPE} instead of {expected.TYPE}")
        return answer

    async def send(self, frame_cls: type[Frame], *, stream: bool = False, **fields) -> int:
        """Send a frame that gets no direct answer: ``ack`` (id 0) or a stream's
        request (``sync``: an ``error`` carrying its id goes to :attr:`pushes`).

        Args:
            stream: accepted for compatibility; every frame but ``ack`` is a stream.

        Returns:
            The request id used (0 for ``ack``).

        Raises:
            ConnectionLost: the connection is closed.
        """
        frame = frame_cls(id=0, **fields)
        try:
            return await self._link.send(frame, stream=frame_cls.TYPE != "ack")
        except net.ConnectionLost as exc:
            raise ConnectionLost(str(exc)) from exc

    def send_nowait(self, frame_cls: type[Frame], **fields) -> bool:
        """Queue an ``ack`` without waiting (fire and forget); ``False`` if the writer's
        queue is full or the connection has ended (acks are cumulative: the next one
        covers this one)."""
        try:
            self._link.send_nowait(frame_cls(id=0, **fields))
        except (trio.WouldBlock, net.ConnectionLost):
            return False
        return True

    async def run_reader(self) -> None:
        """Wait until the connection ends. (The link's own reader task drains the
        socket; this remains for callers that ran the reader themselves.)"""
        await self._link.wait_closed()

    async def aclose(self) -> None:
        """Close the connection now (queued frames are written; closing handshake at
        most 2 s, shielded); outstanding requests fail with :class:`ConnectionLost`.
        The socket is closed at the latest when :func:`open_connection` exits."""
        await self._link.aclose()


async def _publish_own_list(link: net.Link, state: State) -> str | None:
    """``put_devices`` of the account's list if the home may not have it yet (before
    ``auth``: a device just linked authenticates against it). Returns a ``moved`` URL."""
    own = state.device_lists.get(state.user_id)
    if own is None or own.parsed.version <= state.published_version:
        return None
    limit = link.settings.connect_timeout
    try:
        invite = state.invite if not state.published_version else None  # a first list only
        answer = await link.request(PutDevices(id=0, device_list=own.signed, invite=invite),
                                    timeout=limit)
    except net.RequestTimeout as exc:
        raise ConnectionFailed(f"handshake with {link.url} timed out after {limit:g}s") from exc
    except net.ConnectionLost as exc:
        raise ConnectionFailed(f"{exc} during the handshake") from exc
    if isinstance(answer, Error):
        if answer.code == ErrorCode.MOVED and answer.url:
            return answer.url
        if answer.code != ErrorCode.STALE_VERSION:  # stale: already there (a retry after a crash)
            raise RelayError(answer)
    state.published_version = own.parsed.version
    await state.asave()
    return None


async def _authenticate(link: net.Link, state: State) -> AuthOk | str:
    """Returns the node's ``auth_ok``, or the URL from ``error moved``."""
    try:
        moved = await _publish_own_list(link, state)
        if moved is not None:
            return moved
        return await net.authenticate(link, state.user_id, state.device_id, state.identity.sign)
    except net.Refused as exc:
        if exc.code == ErrorCode.MOVED and exc.frame.url:
            return exc.frame.url
        if exc.code == ErrorCode.UNKNOWN_DEVICE:
            raise DeviceRemoved(
                f"this device ({state.device_id}) is no longer in the account's device list: "
                "it was removed (or never approved); link it again with 'wa-cli link'"
            ) from exc
        raise RelayError(exc.frame) from exc


def _addresses(url: str, state: State) -> list[str]:
    """``url`` first, then the home's other known addresses (``state.relay_urls``, when
    ``url`` is one of them: a home served by several processes)."""
    if url not in state.relay_urls:
        return [url]
    return [url, *(u for u in state.relay_urls if u != url)]


async def _remember(state: State, url: str, answer: AuthOk) -> None:
    """Keep the address that answered and the home's addresses from ``auth_ok``."""
    urls = list(answer.urls or ())
    if state.relay_url != url or state.relay_urls != urls:
        state.relay_url, state.relay_urls = url, urls
        await state.asave()


async def fetch_pin(url: str, cluster_key: bytes | None,
                    connect_timeout: float) -> PinnedCluster:
    """Get the signed cluster description from the node at ``url``: signed by
    ``cluster_key`` (``None``: by the key it carries; the caller has the user confirm
    it), the node in it and its challenge signed for this connection. Nothing saved.

    Raises:
        ConnectionFailed: unreachable, no description, another cluster key, a bad
            signature, a node that is not in the description.
        RelayError: the node refused the handshake.
    """
    settings = replace(CLIENT_SETTINGS, connect_timeout=connect_timeout)
    try:
        async with net.open_client_connection(url, agent=AGENT, settings=settings) as link:
            return await net.fetch_cluster(link, cluster_key)
    except net.Refused as exc:
        raise RelayError(exc.frame) from exc
    except net.ConnectFailed as exc:
        raise ConnectionFailed(str(exc)) from exc


async def pin_cluster(state: State, url: str, cluster_key: bytes | None, *,
                      connect_timeout: float) -> PinnedCluster:
    """Get the signed cluster description from the node at ``url`` and pin it in
    ``state`` (saved): signed by ``cluster_key``, or, with ``None``, by the key it
    carries (trust on first use: the caller has the user confirm
    :func:`~relay.protocol.cluster.cluster_key_text` of it). The node must be in it
    and have signed its challenge for this connection.

    Raises:
        ConnectionFailed: unreachable, no description, another cluster key, a bad
            signature, a node that is not in the description.
    """
    pin = await fetch_pin(url, cluster_key, connect_timeout)
    state.cluster = pin
    await state.asave()
    return pin


@asynccontextmanager
async def open_connection(
    nursery: trio.Nursery | None, state: State, *, connect_timeout: float,
    settings: net.LinkSettings = CLIENT_SETTINGS,
) -> AsyncIterator[Connection]:
    """Connect and authenticate to ``state.relay_url``, following ``moved`` (at most 3 hops),
    and yield the :class:`Connection`; on exit close it and its socket, also after the
    node broke the connection. If the saved home cannot be reached or does not know
    the user (``unknown_user``), every other node of the cluster the device knows
    (``state.cluster_urls``, from ``auth_ok``) is asked in turn, following ``moved``:
    a home removed by a reshape is found again.

    A home served by several processes lists its addresses in ``auth_ok``; they are
    kept in ``state.relay_urls``, and when the address in use cannot be reached (or
    breaks off the handshake) the next one is tried, once each, in order. The one
    that answered becomes ``state.relay_url``.

    Every node reached must be a node of the pinned cluster (``state.cluster``,
    docs/cli.md "Pinning the cluster") and sign its challenge for this connection;
    ``moved`` is followed only within it, and a new home is saved only after its
    ``auth_ok``.

    Args:
        nursery: unused (the link runs its own tasks); kept for callers.
        state: the device state; ``relay_url``, ``relay_urls`` and
            ``published_version`` are updated and saved.
        connect_timeout: seconds for each connection attempt and each handshake step.
        settings: keepalive, request deadline and buffers (see :func:`client_settings`).

    Raises:
        ConnectionFailed: unreachable (every address), timed out, closed, or invalid answers.
        DeviceRemoved: the device is not in the account's current list (``unknown_device``).
        RelayError: refused (``unknown_user``, ``unauthorized``, ...).
    """
    settings = replace(settings, connect_timeout=connect_timeout)
    if state.cluster is None:
        log.warning("no pinned cluster: trusting the description of %s on first use",
                    state.relay_url)
        await pin_cluster(state, state.relay_url, None, connect_timeout=connect_timeout)
    first: ClientError | None = None
    for start in _candidates(state):
        stack = AsyncExitStack()
        try:
            conn, url = await _connect_from(stack, start, state, settings)
        except (ConnectionFailed, RelayError) as exc:
            if isinstance(exc, RelayError) and exc.code != ErrorCode.UNKNOWN_USER:
                raise
            first = first or exc
            log.info("home %s: %s; asking another node of the cluster", start, exc)
            continue
        async with stack:
            if url != state.relay_url:
                log.info("home moved: %s -> %s", state.relay_url, url)
                state.relay_url = url
                await state.asave()
            yield conn
        return
    assert first is not None
    raise first


def _candidates(state: State) -> list[str]:
    """Where to look for the home: the saved URL first, then every other node of the
    cluster the device knows (the saved home may have been removed by a reshape), only
    those of the pinned cluster (a URL a node planted in ``auth_ok`` is not tried)."""
    return [state.relay_url, *(u for u in _pinned(state, state.cluster_urls)
                               if u != state.relay_url)]


def _pinned(state: State, urls: list[str]) -> list[str]:
    """Those of ``urls`` that are addresses of nodes of the pinned cluster description."""
    d = state.cluster.description if state.cluster is not None else None
    return [u for u in urls if d is not None and d.node_at(u) is not None]


async def _connect_from(
    stack: AsyncExitStack, url: str, state: State, settings: net.LinkSettings
) -> tuple[Connection, str]:
    """Connect to ``url``, following ``moved`` (at most :data:`MAX_MOVES` hops); return
    the authenticated connection (closed with ``stack``) and its URL. Keeps the
    cluster's node list of ``auth_ok`` in the state."""
    for _ in range(MAX_MOVES + 1):
        candidates = _addresses(url, state)
        for i, candidate in enumerate(candidates):
            async with AsyncExitStack() as attempt:
                try:
                    try:
                        link = await attempt.enter_async_context(net.open_client_connection(
                            candidate, agent=AGENT, settings=settings, cluster=state.cluster))
                        if link.cluster is not None and link.cluster is not state.cluster:
                            log.info("cluster description version %d replaces version %d",
                                     link.cluster.version, state.cluster.version)
                            state.cluster = link.cluster
                            await state.asave()
                        result = await _authenticate(link, state)
                    except net.Refused as exc:  # to hello
                        raise RelayError(exc.frame) from exc
                    except net.ConnectFailed as exc:
                        raise ConnectionFailed(str(exc)) from exc
                except ConnectionFailed as exc:
                    if i + 1 == len(candidates):
                        raise
                    log.info("home address %s failed (%s); trying %s", candidate, exc,
                             candidates[i + 1])
                    continue
                if isinstance(result, AuthOk):
                    stack.push_async_exit(attempt.pop_all())
                    await _remember(state, candidate, result)  # only now: the node proved itself
                    urls = _pinned(state, list(result.cluster or ()))  # never a planted one
                    if urls and urls != state.cluster_urls:
                        state.cluster_urls = urls
                        await state.asave()
                    return Connection(link, result.otk_count), candidate
            break  # moved
        if result == url:
            raise ConnectionFailed(f"{url} redirects to itself")
        if state.cluster.description.node_at(result) is None:
            raise ConnectionFailed(
                f"{url} redirects to {result}, which is not a node of the pinned cluster; "
                f"refused (the saved home stays {state.relay_url})")
        log.info("home moved: %s -> %s", url, result)
        url = result
    raise ConnectionFailed(f"too many redirects (last: {url})")
