"""The compiled frame converters agree with a straightforward reference implementation.

The reference below is the per-field typing introspection that ``parse`` used
before the converters were compiled once per class; hypothesis feeds both the
same maps (valid ones, and ones with wrong, missing or extra values at any
depth) and checks they build the same frame or fail with the same message.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relay.protocol import RemoteProtocolError, encode, read_frame, to_wire, write_frame
from relay.protocol._convert import FieldError, compile_classes
from relay.protocol.frames import FRAME_TYPES, ForwardBatch, GroupRecipient, GroupSend, Results

# ------------------------------------------------------------- the reference


def _ref_bad(path: str, want: str, got: object) -> str:
    return f"field {path!r}: expected {want}, got {type(got).__name__}"


class _RefError(Exception):
    pass


def _ref_convert(value: Any, tp: Any, path: str) -> Any:
    origin = typing.get_origin(tp)
    if origin is types.UnionType or origin is typing.Union:
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _ref_convert(value, inner, path)
    if origin is list:
        if not isinstance(value, list):
            raise _RefError(_ref_bad(path, "array", value))
        (inner,) = typing.get_args(tp)
        return [_ref_convert(v, inner, f"{path}[{i}]") for i, v in enumerate(value)]
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise _RefError(_ref_bad(path, "map", value))
        return _ref_from_map(tp, value, path)
    checks = {int: (lambda v: type(v) is int, "int"), bool: (lambda v: type(v) is bool, "bool"),
              str: (lambda v: isinstance(v, str), "str"), bytes: (lambda v: isinstance(v, bytes), "bin")}
    ok, want = checks[tp]
    if not ok(value):
        raise _RefError(_ref_bad(path, want, value))
    return value


def _ref_from_map(cls: type, data: dict, path: str) -> Any:
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):
        sub = f"{path}.{f.name}" if path else f.name
        if f.name in data:
            kwargs[f.name] = _ref_convert(data[f.name], hints[f.name], sub)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise _RefError(f"missing field {sub!r}")
    return cls(**kwargs)


# ------------------------------------------------------------- strategies

_ANY = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.text(max_size=8)
    | st.binary(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=6,
)


def _valid(tp: Any, depth: int = 0) -> st.SearchStrategy:
    origin = typing.get_origin(tp)
    if origin is types.UnionType or origin is typing.Union:
        (inner,) = [a for a in typing.get_args(tp) if a is not type(None)]
        return st.none() | _valid(inner, depth)
    if origin is list:
        (inner,) = typing.get_args(tp)
        return st.lists(_field(inner, depth + 1), max_size=3)
    if dataclasses.is_dataclass(tp):
        return _map(tp, depth + 1)
    return {int: st.integers(-5, 2**64 - 1), bool: st.booleans(), str: st.text(max_size=8),
            bytes: st.binary(max_size=20)}[tp]


def _field(tp: Any, depth: int) -> st.SearchStrategy:
    """Mostly a valid value, sometimes anything (so errors appear at every depth)."""
    return st.one_of(_valid(tp, depth), _valid(tp, depth), _valid(tp, depth), _ANY)


@st.composite
def _map(draw, cls: type, depth: int = 0) -> dict:
    hints = typing.get_type_hints(cls)
    out: dict = {}
    for f in dataclasses.fields(cls):
        if draw(st.integers(0, 19)) == 0:
            continue  # missing
        out[f.name] = draw(_field(hints[f.name], depth))
    if draw(st.booleans()):
        out["extra"] = draw(_ANY)  # unknown fields are ignored
    return out


@st.composite
def _wire(draw) -> dict:
    # Batch frames (items are whole nested frames) are parsed by frames.parse, not compiled.
    compiled = [c for c in FRAME_TYPES.values() if c not in (ForwardBatch, Results)]
    cls = draw(st.sampled_from(sorted(compiled, key=lambda c: c.TYPE)))
    data = draw(_map(cls))
    data["t"] = cls.TYPE
    return data


# ------------------------------------------------------------- tests


@settings(max_examples=600, deadline=None)
@given(_wire())
def test_compiled_readers_match_the_reference(data: dict) -> None:
    cls = FRAME_TYPES[data["t"]]
    try:
        expected: Any = _ref_from_map(cls, data, "")
    except _RefError as exc:
        expected = str(exc)
    readers, _ = compile_classes([cls])
    try:
        got: Any = readers[cls](data)
    except FieldError as exc:
        got = (f"missing field {exc.path!r}" if exc.want is None
               else f"field {exc.path!r}: expected {exc.want}, got {exc.got}")
    assert got == expected
    if not isinstance(got, str):
        # A frame that converts also survives the wire both ways unchanged.
        assert to_wire(got) == {**_ref_plain(got), "t": cls.TYPE}
        assert readers[cls](to_wire(got)) == got


def _ref_plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value):
        return {f.name: _ref_plain(getattr(value, f.name)) for f in dataclasses.fields(value)
                if getattr(value, f.name) is not None}
    if isinstance(value, list):
        return [_ref_plain(v) for v in value]
    return value


@pytest.mark.parametrize(
    ("wire", "message"),
    [
        ({"t": "send", "id": 1, "msg_id": b"x" * 16,
          "recipients": [{"user_id": "u", "devices_version": 1, "copies": []},
                         {"user_id": "u", "devices_version": 1,
                          "copies": [{"device_id": 0, "body": b""}, {"device_id": 1, "body": "s"}]}]},
         "field 'recipients[1].copies[1].body': expected bin, got str"),
        ({"t": "group_send", "id": 1, "msg_id": b"x" * 16, "body": b"",
          "recipients": [{"user_id": "u", "devices_version": 1, "device_ids": [0, True]}]},
         "field 'recipients[0].device_ids[1]': expected int, got bool"),
        ({"t": "notify", "id": 1, "user_ids": ["a", 5], "envelope": {}},
         "field 'user_ids[1]': expected str, got int"),
        ({"t": "deliver", "id": 0, "items": [{"seq": 1, "envelope": {"msg_id": b""}}]},
         "missing field 'items[0].envelope.sender_user'"),
        ({"t": "error", "id": 1, "code": "x", "device_list": [b"b", b"s"]},
         "field 'device_list': expected map, got list"),
    ],
)
def test_error_paths_name_the_field(wire: dict, message: str) -> None:
    with pytest.raises(RemoteProtocolError) as info:
        read_frame(encode(wire))
    assert info.value.message == message


def test_defaults_fill_missing_optional_fields() -> None:
    frame = read_frame(encode({"t": "error", "id": 3, "code": "internal", "user_id": "u"}))
    assert (frame.message, frame.url, frame.user_id, frame.device_list) == ("", None, "u", None)


def test_group_send_of_256_members_round_trips() -> None:
    members = [GroupRecipient(user_id=f"{i:052d}", devices_version=i, device_ids=[0, i])
               for i in range(256)]
    frame = GroupSend(id=7, msg_id=b"m" * 16, body=b"ciphertext", recipients=members)
    assert read_frame(write_frame(frame)) == frame
