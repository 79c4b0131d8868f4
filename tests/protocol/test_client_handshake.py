"""The connecting side's handshake (:class:`relay.protocol.handshake.Handshake`) against
the node's own state machine (:class:`relay.protocol.connection.ServerConnection`):
frames go through the real codec both ways, no network."""

from __future__ import annotations

import dataclasses
import os

import nacl.signing
import pytest

from relay.protocol import (
    DEFAULT_LIMITS,
    PROTOCOL_VERSION,
    ErrorCode,
    Limits,
    LocalProtocolError,
    RemoteProtocolError,
    auth_message,
    peer_auth_message,
    read_frame,
    verify_signature,
    write_frame,
)
from relay.protocol.connection import ConnState, ServerConnection
from relay.protocol.frames import (
    Auth,
    AuthOk,
    Challenge,
    Error,
    Hello,
    Ok,
    PeerAuth,
    PeerAuthOk,
)
from relay.protocol.handshake import Handshake, HandshakeRefused, HandshakeState

UID = "a" * 52


def _wire(frame, rid: int):
    """``frame`` with request id ``rid`` through the codec (as the I/O layer sends it)."""
    return write_frame(dataclasses.replace(frame, id=rid))


def _challenged(hs: Handshake, server: ServerConnection, node_id: str = "n1",
                ring_version: str = "rv", key: nacl.signing.SigningKey | None = None) -> Challenge:
    hello = server.receive_data(_wire(hs.hello(), 1))
    assert isinstance(hello, Hello) and hello.role == hs.role
    challenge = server.challenge(os.urandom(32), node_id, ring_version,
                                 sign=None if key is None else (lambda m: key.sign(m).signature),
                                 binding=hs.binding)
    return hs.receive_challenge(read_frame(write_frame(challenge)))


def test_device_handshake_end_to_end() -> None:
    device_key = nacl.signing.SigningKey.generate()
    server = ServerConnection(Limits.for_node(512 * 1024, 100_000))
    hs = Handshake("client", "test/1")
    ch = _challenged(hs, server)
    assert hs.state is HandshakeState.CHALLENGED
    assert (hs.limits.max_frame, hs.limits.max_envelope) == (512 * 1024, 100_000)
    auth = server.receive_data(_wire(hs.auth(UID, 3, lambda m: device_key.sign(m).signature), 2))
    assert isinstance(auth, Auth) and (auth.user_id, auth.device_id) == (UID, 3)
    assert verify_signature(bytes(device_key.verify_key),
                            auth_message(ch.nonce, "n1", UID, 3), auth.signature)
    server.mark_authenticated_client(UID, 3)
    assert hs.receive_auth_ok(AuthOk(id=2, otk_count=7)).otk_count == 7
    assert hs.done and server.state is ConnState.CLIENT


def test_peer_handshake_is_mutual() -> None:
    a_key, b_key = nacl.signing.SigningKey.generate(), nacl.signing.SigningKey.generate()
    server = ServerConnection(DEFAULT_LIMITS)
    hs = Handshake("peer", "wa-relay/a", expect_node_id="b", ring_version="rv",
                   budget=DEFAULT_LIMITS, peer_key=bytes(b_key.verify_key))
    ch = _challenged(hs, server, "b", "rv", key=b_key)
    nonce = os.urandom(32)
    pa = server.receive_data(_wire(hs.peer_auth("a", lambda m: a_key.sign(m).signature, nonce), 2))
    assert isinstance(pa, PeerAuth) and pa.nonce == nonce
    assert verify_signature(bytes(a_key.verify_key), peer_auth_message(ch.nonce, "a", "b", "rv"),
                            pa.signature)
    server.mark_authenticated_peer("a")
    forged = PeerAuthOk(id=2, signature=a_key.sign(b"whatever").signature)
    good = PeerAuthOk(id=2, signature=b_key.sign(
        peer_auth_message(nonce, "b", "a", "rv")).signature)
    with pytest.raises(RemoteProtocolError, match="does not verify") as info:
        hs.receive_peer_auth_ok(forged)
    assert info.value.code is ErrorCode.UNAUTHORIZED
    assert hs.receive_peer_auth_ok(good) == good and hs.done


def _peer_hs(**over) -> Handshake:
    kw = dict(expect_node_id="b", ring_version="rv", budget=DEFAULT_LIMITS, peer_key=b"k" * 32)
    return Handshake("peer", **{**kw, **over})


@pytest.mark.parametrize(("hs", "challenge", "needle"), [
    (Handshake("client"), dict(nonce=b"x" * 31), "nonce of 31 bytes"),
    (Handshake("client"), dict(version=1), "protocol version 1"),
    (Handshake("client", expect_node_id="n9"), {}, "expected 'n9'"),
    (_peer_hs(), dict(node_id="c"), "expected 'b'"),
    (_peer_hs(), dict(ring_version="other"), "ring version differs"),
    (_peer_hs(), dict(max_envelope=1000), "size budget differs"),
    (Handshake("client"), dict(max_frame=600, max_envelope=500), "unusable size budget"),
])
def test_wrong_challenges_are_refused(hs: Handshake, challenge: dict, needle: str) -> None:
    fields = dict(id=1, version=PROTOCOL_VERSION, node_id="b", ring_version="rv", nonce=b"n" * 32,
                  max_frame=DEFAULT_LIMITS.max_frame, max_envelope=DEFAULT_LIMITS.max_envelope)
    hs.hello()
    with pytest.raises(RemoteProtocolError, match=needle):
        hs.receive_challenge(Challenge(**{**fields, **challenge}))
    assert hs.challenge is None


def test_refusals_carry_the_error_frame() -> None:
    hs = Handshake("client")
    hs.hello()
    with pytest.raises(HandshakeRefused) as info:
        hs.receive_challenge(Error(id=1, code="unsupported_version", message="speaks [2]"))
    assert info.value.code is ErrorCode.UNSUPPORTED_VERSION
    hs = Handshake("client")
    hs.hello()
    with pytest.raises(RemoteProtocolError, match="unexpected answer to hello: ok"):
        hs.receive_challenge(Ok(id=1))
    hs = Handshake("client")
    _challenged(hs, ServerConnection())
    hs.auth(UID, 0, lambda m: b"s" * 64)
    moved = Error(id=2, code="moved", url="ws://home:1")
    with pytest.raises(HandshakeRefused) as info:
        hs.receive_auth_ok(moved)
    assert info.value.frame == moved and info.value.code is ErrorCode.MOVED
    assert hs.state is HandshakeState.CHALLENGED  # the node still awaits an auth
    hs.auth(UID, 1, lambda m: b"s" * 64)
    assert hs.receive_auth_ok(AuthOk(id=3, otk_count=0)).otk_count == 0
    unknown = HandshakeRefused("auth", Error(id=2, code="from_the_future"))
    assert unknown.code is ErrorCode.INTERNAL and "from_the_future" in str(unknown)


def test_steps_out_of_order_are_local_errors() -> None:
    hs = Handshake("client")
    with pytest.raises(LocalProtocolError):
        hs.auth(UID, 0, lambda m: b"")
    hs.hello()
    with pytest.raises(LocalProtocolError):
        hs.hello()
    with pytest.raises(LocalProtocolError):
        hs.receive_auth_ok(AuthOk(id=1, otk_count=0))
    with pytest.raises(LocalProtocolError):
        Handshake("server")
    with pytest.raises(LocalProtocolError):
        Handshake("peer")  # needs node id, ring version and key
    client = Handshake("client")
    _challenged(client, ServerConnection())
    with pytest.raises(LocalProtocolError):
        client.peer_auth("a", lambda m: b"", b"n" * 32)
