"""Frame conversion: round trips, field type checks, request limits."""

from __future__ import annotations

import pytest

from relay.protocol import (
    ErrorCode,
    Limits,
    RemoteProtocolError,
    encode,
    read_frame,
    write_frame,
)
from relay.protocol.frames import (
    BounceBack,
    Claimed,
    ClaimedKey,
    Copy,
    Deliver,
    DeliverItem,
    Envelope,
    Error,
    Forward,
    ForwardBatch,
    GroupForward,
    GroupRecipient,
    Hello,
    Ok,
    OneTimeKey,
    Recipient,
    Results,
    Send,
    SignedDeviceList,
    UploadKeys,
    error_for,
)

UID = "a" * 52


@pytest.mark.parametrize(
    "frame",
    [
        Hello(id=1, versions=[2], role="client", agent="t"),
        Send(id=2, msg_id=b"x" * 16, recipients=[Recipient(UID, 3, [Copy(0, b"c"), Copy(1, b"")])]),
        UploadKeys(id=3, one_time_keys=[OneTimeKey("AAAAAQ", b"k" * 32)], fallback_key=None),
        UploadKeys(id=3, one_time_keys=[], fallback_key=OneTimeKey("f", b"k" * 32)),
        Claimed(id=4, keys=[ClaimedKey(0, "AAAAAQ", b"k" * 32, False)]),
        Deliver(id=0, items=[DeliverItem(9, Envelope(b"x" * 16, UID, 0, 123, "olm", b"body")),
                             DeliverItem(10, Envelope(b"y" * 16, UID, 1, 124, "group", b""))]),
        ForwardBatch(id=7, items=[
            Forward(id=0, msg_id=b"x" * 16, sender_user=UID, sender_device=0, ts=1,
                    recipients=[Recipient(UID, 3, [Copy(0, b"c")])]),
            GroupForward(id=0, msg_id=b"y" * 16, sender_user=UID, sender_device=1, ts=2,
                         body=b"g", recipients=[GroupRecipient(UID, 3, [0, 2])])]),
        Results(id=7, items=[Ok(id=0), Error(id=0, code="queue_full", message="full")]),
        BounceBack(id=8, envelope=Envelope(b"z" * 16, UID, 2, 3, "bounce", b"why")),
        Error(id=5, code="stale_devices", user_id=UID, device_list=SignedDeviceList(b"b", b"s")),
    ],
)
def test_round_trip(frame) -> None:
    assert read_frame(write_frame(frame)) == frame


def test_none_fields_are_omitted_on_the_wire() -> None:
    import msgpack

    wire = msgpack.unpackb(write_frame(Error(id=1, code="internal")))
    assert wire == {"t": "error", "id": 1, "code": "internal", "message": ""}


@pytest.mark.parametrize(
    "wire",
    [
        {"t": "hello", "id": 1, "versions": "1", "role": "client"},  # str for array
        {"t": "hello", "id": 1, "versions": [True], "role": "client"},  # bool is not int
        {"t": "hello", "id": "1", "versions": [1], "role": "client"},
        {"t": "hello", "id": -1, "versions": [1], "role": "client"},
        {"t": "hello", "versions": [1], "role": "client"},  # missing id
        {"t": "auth", "id": 1, "user_id": UID, "device_id": 0, "signature": "sig"},  # str for bin
        {"t": "send", "id": 1, "msg_id": b"short", "recipients": []},
        {"t": "send", "id": 1, "msg_id": b"x" * 16, "recipients": [{"user_id": UID}]},
        {"t": "send", "id": 1, "msg_id": b"x" * 16, "recipients": [[]]},
        {"t": "nope", "id": 1},
        {"t": 5, "id": 1},
        {"id": 1},
    ],
)
def test_wrong_field_types_are_bad_frame(wire) -> None:
    with pytest.raises(RemoteProtocolError) as info:
        read_frame(encode(wire))
    assert info.value.code is ErrorCode.BAD_FRAME


def test_too_many_copies_is_too_large() -> None:
    send = Send(id=1, msg_id=b"x" * 16, recipients=[Recipient(UID, 1, [Copy(i, b"") for i in range(5)])])
    with pytest.raises(RemoteProtocolError) as info:
        read_frame(write_frame(send), Limits(max_copies=4))
    assert info.value.code is ErrorCode.TOO_LARGE


def test_unknown_extra_fields_are_ignored() -> None:
    frame = read_frame(encode({"t": "ping", "id": 4, "future": [1, 2]}))
    assert frame.TYPE == "ping" and frame.id == 4


def test_error_for() -> None:
    exc = RemoteProtocolError(ErrorCode.UNAUTHORIZED, "bad signature")
    assert error_for(9, exc) == Error(id=9, code="unauthorized", message="bad signature")


def test_get_devices_watcher_is_optional_and_omitted_when_absent() -> None:
    from relay.protocol import decode
    from relay.protocol.frames import GetDevices

    plain = GetDevices(id=4, user_id=UID)
    assert "watcher" not in decode(write_frame(plain))
    assert read_frame(write_frame(plain)) == plain
    peer = GetDevices(id=5, user_id=UID, watcher="b" * 52)
    assert read_frame(write_frame(peer)) == peer
    with pytest.raises(RemoteProtocolError) as info:
        read_frame(encode({"t": "get_devices", "id": 6, "user_id": UID, "watcher": 7}))
    assert info.value.code is ErrorCode.BAD_FRAME
