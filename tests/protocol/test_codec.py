"""The codec and frame parser on hostile input: only RemoteProtocolError, bounded memory."""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relay.protocol import (
    CloseCode,
    ErrorCode,
    Limits,
    RemoteProtocolError,
    decode,
    encode,
    read_frame,
)

SMALL = Limits(max_frame=4096, max_envelope=1024, max_bin=1024, max_str=256, max_array=16, max_map=8, max_copies=4)


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=2048))
def test_decoding_any_bytes_raises_only_remote_protocol_error(data: bytes) -> None:
    try:
        read_frame(data)
    except RemoteProtocolError as exc:
        assert isinstance(exc.code, ErrorCode)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=64).map(lambda b: bytes([0xDD, 0xFF, 0xFF, 0xFF, 0xFF]) + b))
def test_decoding_any_bytes_with_small_limits(data: bytes) -> None:
    with pytest.raises(RemoteProtocolError):
        read_frame(data, SMALL)


_msgpack_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False) | st.text(max_size=20) | st.binary(max_size=20),
    lambda children: st.lists(children, max_size=5)
    | st.dictionaries(st.text(max_size=8) | st.integers(-5, 5), children, max_size=5),
    max_leaves=20,
)


@settings(max_examples=400, deadline=None)
@given(
    st.sampled_from(["hello", "auth", "send", "forward", "put_devices", "upload_keys", "ack", "x"]),
    st.dictionaries(st.text(max_size=12), _msgpack_values, max_size=6),
)
def test_any_msgpack_map_parses_or_raises_remote_protocol_error(t: str, fields: dict) -> None:
    try:
        frame = read_frame(msgpack.packb({"t": t, "id": 1, **fields}, use_bin_type=True))
    except RemoteProtocolError:
        return
    assert frame.TYPE == t


@pytest.mark.parametrize(
    "data",
    [
        bytes.fromhex("ddffffffff"),  # array32 claiming 4 G entries
        bytes.fromhex("dfffffffff"),  # map32 claiming 4 G entries
        bytes.fromhex("c6ffffffff"),  # bin32 claiming 4 GiB
        bytes.fromhex("dbffffffff"),  # str32 claiming 4 GiB
        bytes.fromhex("c7ff01"),  # ext
        b"",
        b"\xc1",  # never-used byte
        encode({"t": "ping", "id": 1}) + b"\x00",  # trailing data
        msgpack.packb([1, 2, 3]),  # not a map
        msgpack.packb({1: "x"}),  # non-string key
    ],
)
def test_hostile_bytes_are_bad_frame(data: bytes) -> None:
    with pytest.raises(RemoteProtocolError) as info:
        decode(data)
    assert info.value.code is ErrorCode.BAD_FRAME
    assert info.value.close_code is None


def test_text_frame_closes_1003() -> None:
    with pytest.raises(RemoteProtocolError) as info:
        decode("hello")
    assert info.value.code is ErrorCode.BAD_FRAME
    assert info.value.close_code is CloseCode.UNSUPPORTED_DATA


def test_oversized_frame_closes_1009() -> None:
    with pytest.raises(RemoteProtocolError) as info:
        decode(b"\x80" * (SMALL.max_frame + 1), SMALL)
    assert info.value.code is ErrorCode.TOO_LARGE
    assert info.value.close_code is CloseCode.MESSAGE_TOO_BIG


def test_nested_depth_bomb_is_bad_frame() -> None:
    data = b"\x91" * 100_000 + b"\xc0"  # 100k nested one-element arrays
    with pytest.raises(RemoteProtocolError) as info:
        decode(data)
    assert info.value.code is ErrorCode.BAD_FRAME
    assert info.value.message == "invalid msgpack: arrays/maps nested deeper than 1024"


# Deep nesting (issue 2, "Garbage input"): msgpack decodes up to 1024 levels,
# more than Python's recursion limit, so nothing may recurse along a value.
_OPEN = {"array": b"\x91", "map": b"\x81\xa1k"}  # one level: [x] or {"k": x}


def nested(depth: int, kinds: str = "array", leaf: bytes = b"\xc0") -> bytes:
    """msgpack of ``leaf`` wrapped in ``depth`` levels, cycling through ``kinds``
    (comma-separated ``array``/``map``)."""
    cycle = kinds.split(",")
    return b"".join(_OPEN[cycle[i % len(cycle)]] for i in range(depth)) + leaf


def _map(*pairs: tuple[str, bytes]) -> bytes:
    """A msgpack map of raw pre-encoded values (so a value may be a depth bomb)."""
    return bytes([0x80 | len(pairs)]) + b"".join(encode_key(k) + v for k, v in pairs)


def encode_key(key: str) -> bytes:
    return msgpack.packb(key)


def _call_deep(levels: int, fn, *args):
    """Call ``fn`` under ``levels`` extra Python frames, like a server's call stack."""
    if levels == 0:
        return fn(*args)
    return _call_deep(levels - 1, fn, *args)


_PACK = msgpack.packb
_PLACES = {
    # the whole frame is the bomb
    "top": lambda bomb: bomb,
    # the frame type is the bomb
    "t": lambda bomb: _map(("t", bomb), ("id", _PACK(1))),
    # a typed field of a valid frame: the wrong type
    "field": lambda bomb: _map(("t", _PACK("hello")), ("id", _PACK(1)), ("versions", bomb),
                               ("role", _PACK("client"))),
    # inside a list of maps (recipients[0].copies)
    "inner": lambda bomb: _map(("t", _PACK("send")), ("id", _PACK(2)), ("msg_id", _PACK(b"m" * 16)),
                               ("recipients", b"\x91" + _map(("user_id", _PACK("u" * 52)),
                                                               ("devices_version", _PACK(1)),
                                                               ("copies", bomb)))),
    # an unknown extra field of a valid frame: ignored
    "extra": lambda bomb: _map(("t", _PACK("hello")), ("id", _PACK(1)), ("versions", _PACK([1])),
                               ("role", _PACK("client")), ("x", bomb)),
}


@settings(max_examples=300, deadline=None)
@given(
    depth=st.one_of(st.integers(0, 1100), st.integers(950, 1030)),
    kinds=st.sampled_from(["array", "map", "array,map", "map,map,array"]),
    place=st.sampled_from(sorted(_PLACES)),
    leaf=st.sampled_from([b"\xc0", b"\x90", b"\x80", b"\xc4\x01x", b"\xc1"]),
    stack=st.sampled_from([0, 200]),
)
def test_deep_nesting_parses_or_raises_bad_frame(depth, kinds, place, leaf, stack) -> None:
    data = _PLACES[place](nested(depth, kinds, leaf))
    try:
        frame = _call_deep(stack, read_frame, data)
    except RemoteProtocolError as exc:
        assert exc.code is ErrorCode.BAD_FRAME
        assert exc.message
        assert len(exc.message) < 200
        assert exc.close_code is None
        return
    # only an ignored field, or no nesting at all around a fitting leaf, parses
    assert place == "extra" or depth == 0, (place, depth)
    assert frame.TYPE in ("hello", "send")


@pytest.mark.parametrize("place", sorted(_PLACES))
@pytest.mark.parametrize("kinds", ["array", "map"])
@pytest.mark.parametrize("depth", [990, 1000, 1020, 1023, 100_000])
def test_deep_nesting_at_the_recursion_limit(place: str, kinds: str, depth: int) -> None:
    data = _PLACES[place](nested(depth, kinds))
    if place == "extra" and depth < 1024:  # the frame map is one more level
        assert read_frame(data).TYPE == "hello"
        return
    with pytest.raises(RemoteProtocolError) as info:
        read_frame(data)
    assert info.value.code is ErrorCode.BAD_FRAME
    assert info.value.message


def test_deep_nesting_with_the_pure_python_msgpack(monkeypatch) -> None:
    """msgpack's fallback unpacker recurses per level: still only bad_frame."""
    import msgpack.fallback

    monkeypatch.setattr(msgpack, "unpackb", msgpack.fallback.unpackb)
    for depth in (999, 1000, 5000):
        with pytest.raises(RemoteProtocolError) as info:
            _call_deep(100, read_frame, _PLACES["t"](nested(depth, "array,map")))
        assert info.value.code is ErrorCode.BAD_FRAME
        assert info.value.message


def test_unknown_frame_type_message_is_short() -> None:
    with pytest.raises(RemoteProtocolError) as info:
        read_frame(encode({"t": "x" * 60_000, "id": 1}))
    assert info.value.message == f"unknown frame type {'x' * 32!r}..."
    with pytest.raises(RemoteProtocolError) as info:
        read_frame(encode({"t": [0] * 4096, "id": 1}))
    assert info.value.message == "field 't': expected str, got list"
    with pytest.raises(RemoteProtocolError) as info:
        read_frame(encode({"id": 1}))
    assert info.value.message == "missing field 't' (the frame type)"


def test_limits_on_lengths() -> None:
    with pytest.raises(RemoteProtocolError):
        decode(encode({"t": "x", "s": "a" * (SMALL.max_str + 1)}), SMALL)
    with pytest.raises(RemoteProtocolError):
        decode(encode({"t": "x", "a": [0] * (SMALL.max_array + 1)}), SMALL)
    assert decode(encode({"t": "x", "a": [0] * SMALL.max_array}), SMALL)["a"] == [0] * 16


_VALID = encode({
    "t": "send", "id": 7, "msg_id": b"m" * 16,
    "recipients": [{"user_id": "u" * 52, "devices_version": 1,
                    "copies": [{"device_id": 0, "body": b"cipher"}]}],
})


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(0, len(_VALID) - 1), st.integers(0, 255)), max_size=4))
def test_mutated_valid_frame_parses_or_raises_remote_protocol_error(flips) -> None:
    data = bytearray(_VALID)
    for pos, value in flips:
        data[pos] = value
    try:
        read_frame(bytes(data))
    except RemoteProtocolError:
        pass


@pytest.mark.parametrize("ext", [msgpack.ExtType(1, b""), msgpack.ExtType(7, b"xy"),
                                 msgpack.Timestamp(1)])
def test_ext_types_are_refused_whatever_their_length(ext) -> None:
    """Issue 15 item 9: a zero-length ext inside an ignored field used to pass."""
    data = msgpack.packb({"t": "ping", "id": 1, "ignored": ext}, use_bin_type=True)
    with pytest.raises(RemoteProtocolError) as info:
        decode(data)
    assert info.value.code is ErrorCode.BAD_FRAME and "ext" in info.value.message
