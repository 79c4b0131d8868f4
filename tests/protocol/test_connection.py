"""The server-side connection state machine, without any network."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relay.protocol import (
    CloseCode,
    ErrorCode,
    LocalProtocolError,
    RemoteProtocolError,
    encode,
    write_frame,
)
from relay.protocol.connection import WINDOW, ConnState, ServerConnection
from relay.protocol.frames import (
    Ack,
    Auth,
    Challenge,
    Deliver,
    DeliverItem,
    Envelope,
    Error,
    Forward,
    GetDevices,
    Hello,
    PeerAuth,
    Ping,
    Send,
    Sync,
)

UID = "a" * 52
NONCE = b"n" * 32


def _hello(role: str = "client", versions=(2,), rid: int = 1) -> bytes:
    return write_frame(Hello(id=rid, versions=list(versions), role=role))


def _awaiting_auth(role: str = "client") -> ServerConnection:
    conn = ServerConnection()
    assert isinstance(conn.receive_data(_hello(role)), Hello)
    ch = conn.challenge(NONCE, "n1", "rv")
    assert ch == Challenge(id=1, version=2, node_id="n1", ring_version="rv", nonce=NONCE,
                          max_frame=1024 * 1024, max_envelope=256 * 1024, window=WINDOW)
    return conn


def _error(conn: ServerConnection, data) -> RemoteProtocolError:
    with pytest.raises(RemoteProtocolError) as info:
        conn.receive_data(data)
    return info.value


def test_client_happy_path() -> None:
    conn = _awaiting_auth("client")
    assert conn.state is ConnState.AWAIT_AUTH and conn.role == "client"
    frame = conn.receive_data(write_frame(Auth(id=2, user_id=UID, device_id=0, signature=b"s")))
    assert isinstance(frame, Auth)
    conn.mark_authenticated_client(UID, 0)
    assert conn.state is ConnState.CLIENT and (conn.user_id, conn.device_id) == (UID, 0)
    assert isinstance(conn.receive_data(write_frame(Sync(id=3))), Sync)
    assert isinstance(conn.receive_data(write_frame(Ack(id=0, seq=5))), Ack)


def test_peer_happy_path() -> None:
    conn = _awaiting_auth("peer")
    conn.receive_data(write_frame(PeerAuth(id=2, node_id="n2", signature=b"s", nonce=NONCE)))
    conn.mark_authenticated_peer("n2")
    assert conn.state is ConnState.PEER and conn.peer_id == "n2"
    fwd = Forward(id=3, msg_id=b"m" * 16, sender_user=UID, sender_device=0, ts=1, recipients=[])
    assert conn.receive_data(write_frame(fwd)) == fwd
    err = _error(conn, write_frame(Send(id=4, msg_id=b"m" * 16, recipients=[])))
    assert err.code is ErrorCode.BAD_REQUEST and conn.last_request_id == 4


def test_first_frame_must_be_hello() -> None:
    conn = ServerConnection()
    err = _error(conn, write_frame(Ping(id=3)))
    assert err.code is ErrorCode.BAD_FRAME and err.close_code is None
    assert conn.error_frame(err) == Error(id=3, code="bad_frame", message=err.message)


def test_unsupported_version_closes() -> None:
    conn = ServerConnection()
    err = _error(conn, _hello(versions=(7, 8)))
    assert err.code is ErrorCode.UNSUPPORTED_VERSION
    assert err.close_code is CloseCode.PROTOCOL_ERROR


def test_bad_role() -> None:
    err = _error(ServerConnection(), _hello(role="admin"))
    assert err.code is ErrorCode.BAD_FRAME


def test_requests_before_auth_are_unauthorized() -> None:
    conn = _awaiting_auth("client")
    err = _error(conn, write_frame(GetDevices(id=5, user_id=UID)))
    assert err.code is ErrorCode.UNAUTHORIZED and conn.last_request_id == 5
    assert isinstance(conn.receive_data(write_frame(Ping(id=6))), Ping)
    peer = _awaiting_auth("peer")
    assert _error(peer, write_frame(Auth(id=2, user_id=UID, device_id=0, signature=b""))).code \
        is ErrorCode.UNAUTHORIZED


def test_pushes_from_a_client_are_not_requests() -> None:
    conn = _awaiting_auth("client")
    deliver = Deliver(id=0, items=[DeliverItem(1, Envelope(b"m" * 16, UID, 0, 1, "olm", b""))])
    assert _error(conn, write_frame(deliver)).code is ErrorCode.BAD_FRAME


def test_second_hello_and_second_auth_are_rejected() -> None:
    conn = _awaiting_auth("client")
    assert _error(conn, _hello()).code is ErrorCode.BAD_REQUEST
    conn.mark_authenticated_client(UID, 0)
    assert _error(conn, write_frame(Auth(id=2, user_id=UID, device_id=0, signature=b""))).code \
        is ErrorCode.BAD_REQUEST


def test_five_bad_frames_in_a_row_close() -> None:
    conn = _awaiting_auth("client")
    for _ in range(4):
        assert _error(conn, b"\xc1").close_code is None
    assert isinstance(conn.receive_data(write_frame(Ping(id=1))), Ping)  # resets the count
    for _ in range(4):
        assert _error(conn, b"\xc1").close_code is None
    err = _error(conn, encode({"t": "ping", "id": "x"}))
    assert err.code is ErrorCode.BAD_FRAME and err.close_code is CloseCode.POLICY_VIOLATION


def test_text_and_oversized_frames_close() -> None:
    conn = _awaiting_auth("client")
    assert _error(conn, "text").close_code is CloseCode.UNSUPPORTED_DATA
    assert _error(conn, b"\x00" * (conn.limits.max_frame + 1)).close_code is CloseCode.MESSAGE_TOO_BIG


def test_local_misuse() -> None:
    conn = ServerConnection()
    with pytest.raises(LocalProtocolError):
        conn.challenge(NONCE, "n1", "rv")  # before hello
    with pytest.raises(LocalProtocolError):
        conn.mark_authenticated_client(UID, 0)
    conn.receive_data(_hello())
    with pytest.raises(LocalProtocolError):
        conn.challenge(b"short", "n1", "rv")
    conn.challenge(NONCE, "n1", "rv")
    with pytest.raises(LocalProtocolError):
        conn.challenge(NONCE, "n1", "rv")
    with pytest.raises(LocalProtocolError):
        conn.mark_authenticated_peer("n2")
    conn.close()
    with pytest.raises(LocalProtocolError):
        conn.receive_data(write_frame(Ping(id=1)))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=64) | st.text(max_size=8), max_size=12))
def test_any_input_sequence_raises_only_remote_protocol_error(messages) -> None:
    conn = ServerConnection()
    for i, data in enumerate(messages):
        if i == 1:
            data = _hello()
        try:
            frame = conn.receive_data(data)
        except RemoteProtocolError as exc:
            if exc.close_code is not None:
                return
            continue
        if isinstance(frame, Hello):
            conn.challenge(NONCE, "n1", "rv")


def test_frames_read_before_the_challenge_are_the_remotes_not_ours() -> None:
    """A node reads frames ahead of its handlers, so a client's keepalive ping (or
    anything pipelined after ``hello``) can be read before the node answered the hello.
    That used to raise LocalProtocolError (a node bug: "unexpected error", logged with a
    traceback, close 1011); it is the remote's frame: admitted if allowed before auth,
    and an ``auth`` that cannot have seen the nonce yet is refused."""
    for role, early in (("client", Ping(id=2)), ("peer", Ping(id=2))):
        conn = ServerConnection()
        conn.receive_data(_hello(role))
        assert conn.receive_data(write_frame(early)) == early
        err = _error(conn, write_frame(
            Auth(id=3, user_id=UID, device_id=0, signature=b"s") if role == "client"
            else PeerAuth(id=3, node_id="n2", signature=b"s", nonce=NONCE)))
        assert err.code is ErrorCode.BAD_REQUEST and err.close_code is None, err
        conn.challenge(NONCE, "n1", "rv")
        frame = conn.receive_data(write_frame(
            Auth(id=4, user_id=UID, device_id=0, signature=b"s") if role == "client"
            else PeerAuth(id=4, node_id="n2", signature=b"s", nonce=NONCE)))
        assert frame.id == 4
