"""Sans-I/O state machine of one connection, seen from the node (server side).

States (docs/protocol.md, "Handshake")::

    AWAIT_HELLO --hello--> AWAIT_AUTH --auth ok--> CLIENT
                                      --peer_auth ok--> PEER
    any state --close()--> CLOSED

The I/O layer feeds every WebSocket message to :meth:`ServerConnection.receive_data`,
which decodes it with the connection's limits, validates the frame and checks
that it is allowed in the current state. Problems raise
:class:`~relay.protocol.errors.RemoteProtocolError`; answer with
:meth:`ServerConnection.error_frame` and close the WebSocket when the error's
``close_code`` is set (text frame 1003, oversized frame 1009, unsupported
version 1002, five consecutive bad frames 1008).

Authentication decisions (signature checks against device lists or node keys)
belong to the caller, which then calls :meth:`mark_authenticated_client` or
:meth:`mark_authenticated_peer`. No I/O, no Trio.
"""

from __future__ import annotations

import enum
from collections.abc import Callable

from .cluster import challenge_message
from .codec import DEFAULT_LIMITS, Limits, decode
from .errors import CloseCode, ErrorCode, LocalProtocolError, RemoteProtocolError
from .frames import (
    PROTOCOL_VERSION,
    SUPPORTED_VERSIONS,
    Ack,
    Auth,
    BounceBack,
    Challenge,
    ClaimKeys,
    Error,
    Forward,
    ForwardBatch,
    Frame,
    GetCluster,
    GetDevices,
    GroupForward,
    GroupSend,
    HandoffComplete,
    HandoffDone,
    HandoffMedia,
    HandoffPut,
    Hello,
    LinkComplete,
    LinkFetch,
    LinkOpen,
    LinkReply,
    MediaDownload,
    MediaStatus,
    MediaUpload,
    Notify,
    PeerAuth,
    Ping,
    PutDevices,
    Send,
    Sync,
    UploadKeys,
    parse,
)

MAX_BAD_FRAMES = 5
NONCE_SIZE = 32
WINDOW = 128
"""Requests a device or peer may have in flight on one connection (announced in
``challenge.window``); the node reads ahead at most that many unanswered requests."""


class ConnState(enum.Enum):
    """Where a server-side connection is in its life."""

    AWAIT_HELLO = "await_hello"
    AWAIT_AUTH = "await_auth"
    CLIENT = "client"
    PEER = "peer"
    CLOSED = "closed"


# Requests a node accepts, per state (and per role while awaiting auth).
# Linking frames and notify are admitted for issue 3; a node may still refuse them.
_CLIENT_PRE_AUTH: frozenset[type[Frame]] = frozenset({Auth, PutDevices, LinkOpen, LinkReply,
                                                      Ping, GetCluster})
_PEER_PRE_AUTH: frozenset[type[Frame]] = frozenset({PeerAuth, Ping})
_CLIENT_REQUESTS: frozenset[type[Frame]] = frozenset(
    {GetCluster, PutDevices, GetDevices, UploadKeys, ClaimKeys, Send, Sync, Ack, Ping, LinkFetch, LinkComplete,
     GroupSend, MediaUpload, MediaStatus, MediaDownload}
)
_PEER_REQUESTS: frozenset[type[Frame]] = frozenset(
    {Forward, GetDevices, ClaimKeys, Ping, LinkFetch, LinkComplete, Notify, GroupForward,
     MediaDownload, ForwardBatch, BounceBack, HandoffPut, HandoffMedia, HandoffDone,
     HandoffComplete}
)
_ALL_REQUESTS = _CLIENT_PRE_AUTH | _PEER_PRE_AUTH | _CLIENT_REQUESTS | _PEER_REQUESTS | {Hello}


class ServerConnection:
    """One connection's protocol state on the node.

    Args:
        limits: decoding limits (``max_frame`` etc.) for every received message.
        peer_limits: the limits once a ``hello`` said ``role: peer`` (default
            ``limits.for_peers()``: node-to-node frames carry up to a whole client
            frame plus forward headers).
        max_bad_frames: consecutive rejected frames after which the error
            carries close code 1008.
        window: requests the other end may have in flight (``challenge.window``).

    Attributes:
        state: the current :class:`ConnState`.
        role: ``"client"`` or ``"peer"`` once ``hello`` was accepted, else ``None``.
        nonce: the 32-byte challenge nonce once :meth:`challenge` was called.
        user_id, device_id: the authenticated device (state ``CLIENT``).
        peer_id: the authenticated node id (state ``PEER``).
        last_request_id: the ``id`` of the last received message if it could
            be read (0 otherwise); :meth:`error_frame` answers with it.
    """

    def __init__(
        self, limits: Limits = DEFAULT_LIMITS, max_bad_frames: int = MAX_BAD_FRAMES, *,
        peer_limits: Limits | None = None, window: int = WINDOW,
    ) -> None:
        self.window = window
        self.limits = limits
        self.budget = limits  # the size budget announced in ``challenge``
        self.peer_limits = peer_limits if peer_limits is not None else limits.for_peers()
        self.max_bad_frames = max_bad_frames
        self.state = ConnState.AWAIT_HELLO
        self.role: str | None = None
        self.nonce: bytes | None = None
        self.node_id: str | None = None
        self.ring_version: str | None = None
        self.user_id: str | None = None
        self.device_id: int | None = None
        self.peer_id: str | None = None
        self.last_request_id = 0
        self.bad_frames = 0
        self._hello_seen = False

    # ----------------------------------------------------------- receiving

    def receive_data(self, data: bytes | bytearray | str) -> Frame:
        """Decode, validate and admit one received WebSocket message.

        Returns:
            The frame, allowed in the current state. A ``hello`` is fully
            checked here (version, role); the caller answers it with
            :meth:`challenge`.

        Raises:
            RemoteProtocolError: with the code to answer; ``close_code`` set
                when the connection must be closed (see the module docstring).
            LocalProtocolError: called in state ``CLOSED``.
        """
        if self.state is ConnState.CLOSED:
            raise LocalProtocolError("receive_data on a closed connection")
        self.last_request_id = 0
        try:
            raw = decode(data, self.limits)
            rid = raw.get("id")
            if type(rid) is int and rid >= 0:
                self.last_request_id = rid
            frame = parse(raw, self.limits)
            self._admit(frame)
        except RemoteProtocolError as exc:
            self.bad_frames += 1
            if exc.close_code is None and self.bad_frames >= self.max_bad_frames:
                raise RemoteProtocolError(
                    exc.code, f"{exc.message} ({self.bad_frames} bad frames in a row)",
                    close_code=CloseCode.POLICY_VIOLATION,
                ) from exc
            raise
        self.bad_frames = 0
        return frame

    def _admit(self, frame: Frame) -> None:
        cls = type(frame)
        if cls not in _ALL_REQUESTS:
            raise RemoteProtocolError(ErrorCode.BAD_FRAME, f"{frame.TYPE!r} is not a request")
        if self.state is ConnState.AWAIT_HELLO:
            if cls is not Hello:
                raise RemoteProtocolError(ErrorCode.BAD_FRAME, "the first frame must be 'hello'")
            self._check_hello(frame)  # type: ignore[arg-type]
            return
        if cls is Hello:
            raise RemoteProtocolError(ErrorCode.BAD_REQUEST, "'hello' was already received")
        if self.state is ConnState.AWAIT_AUTH:
            allowed = _CLIENT_PRE_AUTH if self.role == "client" else _PEER_PRE_AUTH
            if cls not in allowed:
                raise RemoteProtocolError(
                    ErrorCode.UNAUTHORIZED, f"{frame.TYPE!r} needs an authenticated {self.role}"
                )
            if self.nonce is None and cls in (Auth, PeerAuth):
                # read before the node answered hello (frames are read ahead of the
                # handlers): an auth cannot sign a challenge it has not seen yet
                raise RemoteProtocolError(
                    ErrorCode.BAD_REQUEST, f"{frame.TYPE!r} before the challenge was sent")
            return
        allowed = _CLIENT_REQUESTS if self.state is ConnState.CLIENT else _PEER_REQUESTS
        if cls in (Auth, PeerAuth):
            raise RemoteProtocolError(ErrorCode.BAD_REQUEST, "already authenticated")
        if cls not in allowed:
            raise RemoteProtocolError(
                ErrorCode.BAD_REQUEST, f"{frame.TYPE!r} is not allowed on a {self.role} connection"
            )

    def _check_hello(self, hello: Hello) -> None:
        if hello.role not in ("client", "peer"):
            raise RemoteProtocolError(ErrorCode.BAD_FRAME, "role must be 'client' or 'peer'")
        if not any(v in SUPPORTED_VERSIONS for v in hello.versions):
            raise RemoteProtocolError(
                ErrorCode.UNSUPPORTED_VERSION,
                f"no common protocol version; this node speaks {list(SUPPORTED_VERSIONS)}",
                close_code=CloseCode.PROTOCOL_ERROR,
            )
        self.role = hello.role
        if hello.role == "peer":
            self.limits = self.peer_limits
        self.state = ConnState.AWAIT_AUTH

    # ----------------------------------------------------------- sending side

    def challenge(self, nonce: bytes, node_id: str, ring_version: str, *,
                  sign: Callable[[bytes], bytes] | None = None, binding: bytes = b"",
                  cluster_version: int | None = None) -> Challenge:
        """The ``challenge`` answering the accepted ``hello`` (id repeated).

        Args:
            nonce: 32 fresh random bytes; devices and peers sign over it.
            node_id: this node's id.
            ring_version: this node's ring version.
            sign: signs with the node key (64 bytes): the challenge then carries the
                signature over :func:`~relay.protocol.cluster.challenge_message`.
            binding: this connection's channel binding (``b""`` without TLS).
            cluster_version: the version of the signed cluster description served.

        Raises:
            LocalProtocolError: not right after ``hello``, or a nonce of the wrong size.
        """
        if self.state is not ConnState.AWAIT_AUTH or self.nonce is not None:
            raise LocalProtocolError("challenge() answers an accepted hello, once")
        if len(nonce) != NONCE_SIZE:
            raise LocalProtocolError(f"the nonce must be {NONCE_SIZE} bytes")
        self.nonce, self.node_id, self.ring_version = nonce, node_id, ring_version
        return Challenge(
            id=self.last_request_id, version=PROTOCOL_VERSION, node_id=node_id,
            ring_version=ring_version, nonce=nonce,
            max_frame=self.budget.max_frame, max_envelope=self.budget.max_envelope,
            window=self.window,
            signature=None if sign is None else sign(
                challenge_message(nonce, node_id, ring_version, binding)),
            cluster_version=cluster_version,
        )

    def mark_authenticated_client(self, user_id: str, device_id: int) -> None:
        """The caller verified an ``auth``: the connection now serves this device.

        Raises:
            LocalProtocolError: not awaiting a client's auth.
        """
        if self.state is not ConnState.AWAIT_AUTH or self.role != "client" or self.nonce is None:
            raise LocalProtocolError("mark_authenticated_client outside a client's auth")
        self.user_id, self.device_id = user_id, device_id
        self.state = ConnState.CLIENT

    def mark_authenticated_peer(self, peer_id: str) -> None:
        """The caller verified a ``peer_auth``: the connection now serves node ``peer_id``.

        Raises:
            LocalProtocolError: not awaiting a peer's auth.
        """
        if self.state is not ConnState.AWAIT_AUTH or self.role != "peer" or self.nonce is None:
            raise LocalProtocolError("mark_authenticated_peer outside a peer's auth")
        self.peer_id = peer_id
        self.state = ConnState.PEER

    def close(self) -> None:
        """Enter ``CLOSED``; further :meth:`receive_data` calls are a local error."""
        self.state = ConnState.CLOSED

    def error_frame(self, exc: RemoteProtocolError, request_id: int | None = None) -> Error:
        """The ``error`` frame for ``exc``, answering ``request_id`` (default:
        the last received message's id, 0 when it was unreadable)."""
        rid = self.last_request_id if request_id is None else request_id
        return Error(id=rid, code=exc.code.value, message=exc.message)
