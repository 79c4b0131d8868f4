"""Issue 15 item 9, "Ext types refused everywhere, zero-length ones included": not only
the frame decoder but every structure relay/protocol decodes (signed device lists and
cluster descriptions, the device-list notice body, bounce bodies, handoff records,
stored envelopes and forwards) refuses a msgpack ext type, also a zero-length one in
a field it would otherwise ignore (``max_ext_len=0`` lets that one through)."""

from __future__ import annotations

import os

import msgpack
import nacl.signing
import pytest

from relay.protocol import Device, DeviceList, RemoteProtocolError, user_id_from_key
from relay.protocol._handoff_frames import decode_records, encode_records
from relay.protocol.cluster import (
    CLUSTER_CONTEXT,
    ClusterDescription,
    ClusterNode,
    SignedCluster,
    verify_cluster,
)
from relay.protocol.frames import Envelope, SignedDeviceList
from relay.protocol.identity import (
    DEVICE_LIST_CONTEXT,
    decode_signed_list,
    encode_signed_list,
    verify_device_list,
)
from relay.protocol.stored import (
    decode_bounce,
    decode_envelope,
    encode_bounce_body,
    encode_envelope,
    salvage_forward,
)

EXT = msgpack.ExtType(1, b"")  # zero-length


def _with_ext(blob: bytes) -> bytes:
    """``blob`` (a msgpack map) with one more, ignored field holding ``EXT``."""
    m = msgpack.unpackb(blob, raw=False)
    m["ignored"] = EXT
    return msgpack.packb(m, use_bin_type=True)


def test_the_helper_keeps_a_zero_length_ext() -> None:
    assert msgpack.unpackb(_with_ext(msgpack.packb({"a": 1})), max_ext_len=0)["ignored"] == EXT


def test_signed_device_list_body() -> None:
    key = nacl.signing.SigningKey.generate()
    uid = user_id_from_key(bytes(key.verify_key))
    body = _with_ext(DeviceList(uid, 1, (Device(0, b"e" * 32, b"c" * 32, "l", 1),), 100).encode())
    signed = SignedDeviceList(body, key.sign(DEVICE_LIST_CONTEXT + body).signature)
    with pytest.raises(RemoteProtocolError, match="not msgpack"):
        verify_device_list(signed, uid)


def test_cluster_description_body() -> None:
    key = nacl.signing.SigningKey.generate()
    desc = ClusterDescription(1, (ClusterNode("n1", "wss://127.0.0.1:7400",
                                              bytes(key.verify_key)),), 1 << 20)
    body = _with_ext(desc.encode())
    signed = SignedCluster(body, key.sign(CLUSTER_CONTEXT + body).signature,
                           bytes(key.verify_key))
    with pytest.raises(RemoteProtocolError):
        verify_cluster(signed)


def test_device_list_notice_body() -> None:
    blob = _with_ext(encode_signed_list(SignedDeviceList(b"body", b"s" * 64)))
    with pytest.raises(RemoteProtocolError):
        decode_signed_list(blob)


def test_bounce_body() -> None:
    with pytest.raises(ValueError, match="not a bounce body"):
        decode_bounce(_with_ext(encode_bounce_body("too_large", "m", "u")))


def test_stored_envelope_and_forward() -> None:
    env = Envelope(os.urandom(16), "u" * 52, 0, 1, "olm", b"body")
    with pytest.raises(ValueError, match="corrupt"):
        decode_envelope(_with_ext(encode_envelope(env)))
    forward = {"t": "forward", "msg_id": os.urandom(16), "sender_user": "u", "sender_device": 0}
    assert salvage_forward(msgpack.packb(forward)) is not None
    assert salvage_forward(_with_ext(msgpack.packb(forward))) is None


def test_handoff_records() -> None:
    rows = msgpack.unpackb(encode_records([("u" * 52, 0, "q", 1, 2.0, b"v")]), raw=False)
    rows[0][5] = EXT
    with pytest.raises(RemoteProtocolError):
        decode_records(msgpack.packb(rows, use_bin_type=True), 1 << 20)
