"""Sans-I/O handshake of the connecting side (a device, a linking device, or a peer node).

Steps (docs/protocol.md, "Handshake")::

    hello()                 -> hello {versions, role, agent}
    receive_challenge(f)    <- challenge {version, node_id, ring_version, nonce, max_frame, max_envelope,
                                          signature, cluster_version}
    verify_node(cluster)    (the challenge's node is in the pinned cluster description and
                             signed it for this connection's channel binding)
    client role:
      [any pre-auth request: put_devices, link_open, ping]
      auth(user_id, device_id, sign)        -> auth {signature over auth_message(...)}
      receive_auth_ok(f)                     <- auth_ok {otk_count}
    peer role:
      peer_auth(node_id, sign, nonce)        -> peer_auth {signature, nonce}
      receive_peer_auth_ok(f)                <- peer_auth_ok {signature over our nonce} (verified)

:class:`Handshake` builds each outgoing frame (with ``id`` 0: the I/O layer assigns
request ids, see :class:`relay.protocol.session.Session`) and checks each answer.
It holds no keys: signing is a callable the caller passes in. The I/O layer passes
the connection's channel binding (:func:`relay.protocol.cluster.server_end_point`):
``auth``, ``peer_auth`` and the node's challenge signature cover it. No I/O, no Trio.

Errors: :class:`HandshakeRefused` when the node answered ``error`` (``moved``,
``unknown_device``, ``unsupported_version``, ...: the frame is attached);
:class:`~relay.protocol.errors.RemoteProtocolError` when its answer is wrong
(another frame type, a nonce of the wrong size, another node id, ring version or
size budget than expected, a ``peer_auth_ok`` signature that does not verify);
:class:`~relay.protocol.errors.LocalProtocolError` when a step is called out of order.
"""

from __future__ import annotations

import enum
from collections.abc import Callable

from .cluster import ClusterDescription, ClusterNode, challenge_message, check_challenge
from .codec import DEFAULT_LIMITS, Limits
from .errors import ErrorCode, LocalProtocolError, ProtocolError, RemoteProtocolError
from .frames import (
    SUPPORTED_VERSIONS,
    Auth,
    AuthOk,
    Challenge,
    Error,
    Frame,
    Hello,
    PeerAuth,
    PeerAuthOk,
)
from .identity import auth_message, peer_auth_message, verify_signature

__all__ = ["NONCE_SIZE", "Handshake", "HandshakeRefused", "HandshakeState"]

NONCE_SIZE = 32
ROLES = ("client", "peer")


class HandshakeRefused(ProtocolError):
    """The node answered a handshake step with ``error``.

    Attributes:
        frame: the ``error`` frame (``url`` for ``moved``).
        code: its code as an :class:`~relay.protocol.errors.ErrorCode`
            (``internal`` for a code this version does not know).
    """

    def __init__(self, step: str, frame: Error) -> None:
        try:
            code = ErrorCode(frame.code)
        except ValueError:
            code = ErrorCode.INTERNAL
        detail = f": {frame.message}" if frame.message else ""
        super().__init__(code, f"{step} refused ({frame.code}{detail})")
        self.frame = frame


class HandshakeState(enum.Enum):
    """Where the connecting side is in its handshake."""

    START = "start"
    AWAIT_CHALLENGE = "await_challenge"
    CHALLENGED = "challenged"  # pre-auth requests allowed; auth / peer_auth next
    AWAIT_AUTH_OK = "await_auth_ok"
    DONE = "done"


Signer = Callable[[bytes], bytes]
"""Signs a message with the device key (client) or node key (peer); returns 64 bytes."""


class Handshake:
    """The connecting side's handshake state machine.

    Args:
        role: ``"client"`` (a device or a linking device) or ``"peer"`` (a node).
        agent: free text sent in ``hello`` (e.g. ``"wa-cli/0.1"``).
        expect_node_id: the node id the other side must announce (peers; clients
            that know whom they dial), or ``None`` to accept any.
        ring_version: the ring version the other side must announce (peers).
        budget: the size budget (``max_frame``, ``max_envelope``) the other side
            must announce (peers: the cluster agrees on one budget), or ``None``.
        peer_key: the other node's 32-byte Ed25519 public key (peer role; checks the
            challenge's signature and ``peer_auth_ok``).
        binding: the connection's channel binding (32 bytes with TLS, ``b""`` without).
        cluster: the pinned cluster description (client role): the challenge is checked
            with :meth:`verify_node` as it arrives. ``None``: the caller calls
            :meth:`verify_node` itself (after fetching a newer description) or not at
            all (first contact, before pinning).

    Attributes:
        state: the current :class:`HandshakeState`.
        challenge: the accepted ``challenge`` (after :meth:`receive_challenge`).
        limits: the other side's size budget as :class:`Limits` (after the challenge;
            a node that announces none gets the defaults).
        auth_ok: the ``auth_ok`` of a client handshake, once done.

    Raises:
        LocalProtocolError: unknown role, or a peer role without ``ring_version``
            and ``peer_key``.
    """

    def __init__(
        self, role: str, agent: str = "", *, expect_node_id: str | None = None,
        ring_version: str | None = None, budget: Limits | None = None,
        peer_key: bytes | None = None, binding: bytes = b"",
        cluster: ClusterDescription | None = None,
    ) -> None:
        if role not in ROLES:
            raise LocalProtocolError(f"role must be one of {ROLES}, not {role!r}")
        if role == "peer" and (ring_version is None or peer_key is None or expect_node_id is None):
            raise LocalProtocolError("a peer handshake needs expect_node_id, ring_version and "
                                     "peer_key")
        self.role = role
        self.agent = agent
        self.expect_node_id = expect_node_id
        self.ring_version = ring_version
        self.budget = budget
        self.peer_key = peer_key
        self.state = HandshakeState.START
        self.challenge: Challenge | None = None
        self.limits: Limits = DEFAULT_LIMITS
        self.auth_ok: AuthOk | None = None
        self.binding = binding
        self.cluster = cluster
        self.node: ClusterNode | None = None  # the verified node (client role)
        self._node_id: str | None = None  # ours, peer role
        self._my_nonce: bytes | None = None

    @property
    def done(self) -> bool:
        """Whether the connection is authenticated."""
        return self.state is HandshakeState.DONE

    def _expect(self, state: HandshakeState, step: str) -> None:
        if self.state is not state:
            raise LocalProtocolError(f"{step} in handshake state {self.state.value}")

    # ------------------------------------------------------------- hello

    def hello(self) -> Hello:
        """The first frame.

        Raises:
            LocalProtocolError: called twice.
        """
        self._expect(HandshakeState.START, "hello()")
        self.state = HandshakeState.AWAIT_CHALLENGE
        return Hello(id=0, versions=list(SUPPORTED_VERSIONS), role=self.role, agent=self.agent)

    def receive_challenge(self, frame: Frame) -> Challenge:
        """Check the answer to ``hello``.

        Returns:
            The challenge; :attr:`limits` now holds the node's size budget.

        Raises:
            HandshakeRefused: ``error`` (e.g. ``unsupported_version``).
            RemoteProtocolError: another frame, a version we do not speak, a nonce not
                of 32 bytes, or another node id, ring version or size budget than expected.
        """
        self._expect(HandshakeState.AWAIT_CHALLENGE, "receive_challenge()")
        if isinstance(frame, Error):
            raise HandshakeRefused("hello", frame)
        if not isinstance(frame, Challenge):
            raise RemoteProtocolError(ErrorCode.BAD_FRAME,
                                      f"unexpected answer to hello: {frame.TYPE}")
        if frame.version not in SUPPORTED_VERSIONS:
            raise RemoteProtocolError(ErrorCode.UNSUPPORTED_VERSION,
                                      f"the node chose protocol version {frame.version}")
        if len(frame.nonce) != NONCE_SIZE:
            raise RemoteProtocolError(ErrorCode.BAD_FRAME,
                                      f"challenge nonce of {len(frame.nonce)} bytes, not 32")
        if self.expect_node_id is not None and frame.node_id != self.expect_node_id:
            raise RemoteProtocolError(
                ErrorCode.UNAUTHORIZED,
                f"unexpected challenge: node id {frame.node_id!r}, expected {self.expect_node_id!r}")
        if self.ring_version is not None and frame.ring_version != self.ring_version:
            raise RemoteProtocolError(
                ErrorCode.UNAUTHORIZED,
                "ring version differs: the nodes read different cluster files")
        announced = (frame.max_frame, frame.max_envelope)
        if self.budget is not None and announced != (self.budget.max_frame,
                                                     self.budget.max_envelope):
            raise RemoteProtocolError(
                ErrorCode.BAD_REQUEST,
                f"size budget differs: peer max_frame={frame.max_frame} max_envelope="
                f"{frame.max_envelope}, ours {self.budget.max_frame}/{self.budget.max_envelope}")
        try:
            self.limits = Limits.for_node(frame.max_frame or DEFAULT_LIMITS.max_frame,
                                          frame.max_envelope)
        except ValueError as exc:
            raise RemoteProtocolError(ErrorCode.BAD_FRAME, f"unusable size budget: {exc}") from exc
        if self.peer_key is not None and (frame.signature is None or not verify_signature(
                self.peer_key, challenge_message(frame.nonce, frame.node_id, frame.ring_version,
                                                 self.binding), frame.signature)):
            raise RemoteProtocolError(ErrorCode.UNAUTHORIZED,
                                      "the peer's challenge is not signed by its node key for "
                                      "this connection")
        self.challenge = frame
        self.state = HandshakeState.CHALLENGED
        if self.cluster is not None:
            self.verify_node(self.cluster)
        return frame

    def verify_node(self, cluster: ClusterDescription) -> ClusterNode:
        """Check the accepted challenge against a pinned cluster description: its node is
        in ``cluster`` (and is ``expect_node_id``, if set), and its signature verifies
        under that node's key for this connection's channel binding.

        Returns:
            The node's entry (also kept in :attr:`node`).

        Raises:
            RemoteProtocolError: ``unauthorized`` (unknown node, another node, a bad or
                missing signature: e.g. a challenge relayed from another connection).
            LocalProtocolError: no challenge accepted yet.
        """
        ch = self.challenge
        if ch is None:
            raise LocalProtocolError("verify_node() before the challenge")
        self.node = check_challenge(cluster, nonce=ch.nonce, node_id=ch.node_id,
                                    ring_version=ch.ring_version, signature=ch.signature,
                                    binding=self.binding, expect_node_id=self.expect_node_id)
        return self.node

    # ------------------------------------------------------------- client role

    def auth(self, user_id: str, device_id: int, sign: Signer) -> Auth:
        """The device's ``auth``: ``sign(auth_message(nonce, node_id, user_id, device_id,
        binding))``.

        Raises:
            LocalProtocolError: not a client, or not right after the challenge.
        """
        self._expect(HandshakeState.CHALLENGED, "auth()")
        if self.role != "client":
            raise LocalProtocolError("auth() is the client role's step")
        ch = self.challenge
        assert ch is not None
        signature = sign(auth_message(ch.nonce, ch.node_id, user_id, device_id, self.binding))
        self.state = HandshakeState.AWAIT_AUTH_OK
        return Auth(id=0, user_id=user_id, device_id=device_id, signature=signature)

    def receive_auth_ok(self, frame: Frame) -> AuthOk:
        """Check the answer to ``auth``.

        Raises:
            HandshakeRefused: ``error`` (``moved`` with ``url``, ``unknown_device``, ...).
                The state goes back to ``CHALLENGED``: the node keeps awaiting an
                ``auth`` on this connection, so :meth:`auth` may be tried again.
            RemoteProtocolError: another frame type.
        """
        self._expect(HandshakeState.AWAIT_AUTH_OK, "receive_auth_ok()")
        if isinstance(frame, Error):
            self.state = HandshakeState.CHALLENGED
            raise HandshakeRefused("auth", frame)
        if not isinstance(frame, AuthOk):
            raise RemoteProtocolError(ErrorCode.BAD_FRAME, f"unexpected answer to auth: {frame.TYPE}")
        self.auth_ok = frame
        self.state = HandshakeState.DONE
        return frame

    # ------------------------------------------------------------- peer role

    def peer_auth(self, node_id: str, sign: Signer, nonce: bytes) -> PeerAuth:
        """This node's ``peer_auth``.

        Args:
            node_id: our node id.
            sign: signs with our node key.
            nonce: 32 fresh random bytes the other node must sign back.

        Raises:
            LocalProtocolError: not a peer, out of order, or a nonce not of 32 bytes.
        """
        self._expect(HandshakeState.CHALLENGED, "peer_auth()")
        if self.role != "peer":
            raise LocalProtocolError("peer_auth() is the peer role's step")
        if len(nonce) != NONCE_SIZE:
            raise LocalProtocolError("the nonce must be 32 bytes")
        ch = self.challenge
        assert ch is not None and self.ring_version is not None
        signature = sign(peer_auth_message(ch.nonce, node_id, ch.node_id, self.ring_version,
                                           self.binding))
        self._node_id, self._my_nonce = node_id, nonce
        self.state = HandshakeState.AWAIT_AUTH_OK
        return PeerAuth(id=0, node_id=node_id, signature=signature, nonce=nonce)

    def receive_peer_auth_ok(self, frame: Frame) -> PeerAuthOk:
        """Check the answer to ``peer_auth``: the other node's signature over our nonce.

        Raises:
            HandshakeRefused: ``error`` (``unauthorized``: it does not know our key, ...);
                back to ``CHALLENGED`` as for :meth:`receive_auth_ok`.
            RemoteProtocolError: another frame, or a signature that does not verify.
        """
        self._expect(HandshakeState.AWAIT_AUTH_OK, "receive_peer_auth_ok()")
        if isinstance(frame, Error):
            self.state = HandshakeState.CHALLENGED
            raise HandshakeRefused("peer_auth", frame)
        ch = self.challenge
        assert ch is not None and self._my_nonce is not None and self._node_id is not None
        assert self.peer_key is not None and self.ring_version is not None
        expected = peer_auth_message(self._my_nonce, ch.node_id, self._node_id, self.ring_version,
                                     self.binding)
        if not isinstance(frame, PeerAuthOk) or not verify_signature(
                self.peer_key, expected, frame.signature):
            raise RemoteProtocolError(ErrorCode.UNAUTHORIZED,
                                      "peer_auth_ok signature does not verify")
        self.state = HandshakeState.DONE
        return frame
