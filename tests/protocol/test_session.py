"""The connecting side's sans-I/O bookkeeping: request ids, window, streams,
classification and keepalive, without any network or clock."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from relay.protocol import LocalProtocolError
from relay.protocol.frames import (
    Deliver,
    DeliverItem,
    Devices,
    Envelope,
    Error,
    GetDevices,
    KeyCount,
    LinkData,
    Ok,
    Ping,
    SignedDeviceList,
    Sync,
    Synced,
)
from relay.protocol.keepalive import KeepaliveAction, KeepaliveConfig
from relay.protocol.session import Incoming, Session

UID = "a" * 52
DL = SignedDeviceList(b"body", b"s" * 64)


def _ask(session: Session) -> int:
    return session.open_request(GetDevices(id=0, user_id=UID)).id


def _deliver(seq: int = 1) -> Deliver:
    return Deliver(id=0, items=[DeliverItem(seq=seq, envelope=Envelope(b"m" * 16, UID, 0, 1,
                                                                       "olm", b"x"))])


def test_ids_grow_and_are_never_reused() -> None:
    s = Session()
    first, second = _ask(s), _ask(s)
    assert (first, second) == (1, 2)
    s.give_up(first)
    assert _ask(s) == 3
    assert s.open_stream(Sync(id=0)).id == 4
    assert s.ping().id == 5


def test_window_bounds_requests_in_flight() -> None:
    s = Session(window=2)
    a, _ = _ask(s), _ask(s)
    assert not s.window_open and s.in_flight == 2
    with pytest.raises(LocalProtocolError, match="window"):
        _ask(s)
    assert s.receive(Devices(id=a, device_list=DL), 0.0) is Incoming.ANSWER
    assert s.window_open
    _ask(s)
    s.ping()  # pings never count
    assert s.in_flight == 2


def test_answers_out_of_order_each_once_then_late() -> None:
    s = Session()
    a, b, c = _ask(s), _ask(s), _ask(s)
    assert s.receive(Error(id=c, code="unknown_user"), 0.0) is Incoming.ANSWER
    assert s.receive(Devices(id=a, device_list=DL), 0.0) is Incoming.ANSWER
    s.give_up(b)
    assert s.receive(Devices(id=b, device_list=DL), 0.0) is Incoming.LATE
    assert s.receive(Devices(id=a, device_list=DL), 0.0) is Incoming.LATE  # answered already
    assert s.in_flight == 0


@given(st.permutations(list(range(20))))
def test_any_answer_order_matches_every_request(order: list[int]) -> None:
    s = Session(window=20)
    ids = [_ask(s) for _ in range(20)]
    kinds = [s.receive(Ok(id=ids[i]), 0.0) for i in order]
    assert kinds == [Incoming.ANSWER] * 20 and s.in_flight == 0


def test_pushes_and_streams() -> None:
    s = Session()
    rid = _ask(s)
    stream = s.open_stream(Sync(id=0)).id
    assert s.receive(_deliver(), 0.0) is Incoming.PUSH
    assert s.receive(Synced(id=0), 0.0) is Incoming.PUSH
    assert s.receive(LinkData(id=0, body=b"x"), 0.0) is Incoming.PUSH
    assert s.receive(KeyCount(id=0, otk_count=3), 0.0) is Incoming.PUSH
    assert s.receive(Error(id=0, code="unknown_device"), 0.0) is Incoming.PUSH
    # key_count answering upload_keys is an answer, not a push
    assert s.receive(KeyCount(id=rid, otk_count=100), 0.0) is Incoming.ANSWER
    # an error with the stream's id ends the stream and is passed on
    assert s.receive(Error(id=stream, code="internal"), 0.0) is Incoming.PUSH
    assert s.receive(Error(id=stream, code="internal"), 0.0) is Incoming.LATE
    assert s.in_flight == 0


def test_the_other_ends_ping_is_never_an_answer() -> None:
    s = Session()
    rid = _ask(s)
    assert s.receive(Ping(id=rid), 0.0) is Incoming.PING  # same number, its own id space
    assert s.is_pending(rid)
    assert Session.pong(Ping(id=rid)) == Ok(id=rid)
    assert s.receive(Ping(id=0), 0.0) is Incoming.LATE


def test_keepalive_pings_after_silence_and_declares_death() -> None:
    s = Session(keepalive=KeepaliveConfig(interval=20, timeout=10), now=100.0)
    assert s.next_keepalive(100.0) == 120.0
    assert s.poll_keepalive(119.9) is KeepaliveAction.NOTHING
    assert s.poll_keepalive(120.0) is KeepaliveAction.PING
    ping = s.ping()
    assert s.next_keepalive(120.0) == 130.0
    assert s.poll_keepalive(129.9) is KeepaliveAction.NOTHING  # no second ping meanwhile
    assert s.receive(Ok(id=ping.id), 125.0) is Incoming.KEEPALIVE
    assert s.next_keepalive(125.0) == 145.0
    assert s.poll_keepalive(145.0) is KeepaliveAction.PING
    s.ping()
    assert s.poll_keepalive(154.9) is KeepaliveAction.NOTHING
    assert s.poll_keepalive(155.0) is KeepaliveAction.DEAD


def test_any_frame_is_a_sign_of_life() -> None:
    s = Session(keepalive=KeepaliveConfig(interval=20, timeout=10), now=0.0)
    assert s.poll_keepalive(20.0) is KeepaliveAction.PING
    s.ping()
    s.receive(_deliver(), 29.0)  # a push, not the ok: alive all the same
    assert s.poll_keepalive(30.0) is KeepaliveAction.NOTHING
    assert s.next_keepalive(30.0) == 49.0


def test_a_stalled_reader_pauses_the_judgement() -> None:
    s = Session(keepalive=KeepaliveConfig(interval=20, timeout=10), now=0.0)
    s.keepalive.stall()
    assert s.poll_keepalive(1000.0) is KeepaliveAction.NOTHING
    assert s.next_keepalive(1000.0) == 1010.0  # look again later
    s.keepalive.resume(1000.0)
    assert s.poll_keepalive(1019.0) is KeepaliveAction.NOTHING
    assert s.poll_keepalive(1020.0) is KeepaliveAction.PING


def test_keepalive_disabled_and_bad_settings() -> None:
    s = Session(keepalive=KeepaliveConfig(interval=0), now=0.0)
    assert s.poll_keepalive(1e9) is KeepaliveAction.NOTHING
    assert s.next_keepalive(0.0) == math.inf
    with pytest.raises(ValueError):
        KeepaliveConfig(interval=-1)
    with pytest.raises(ValueError):
        KeepaliveConfig(timeout=0)
    with pytest.raises(ValueError):
        Session(window=0)


def test_close_returns_what_will_never_be_answered() -> None:
    s = Session()
    a, b = _ask(s), _ask(s)
    s.receive(Ok(id=a), 0.0)
    assert s.close() == {b}
    assert s.poll_keepalive(1e9) is KeepaliveAction.NOTHING
    with pytest.raises(LocalProtocolError):
        _ask(s)
