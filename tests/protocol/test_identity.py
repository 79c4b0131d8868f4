"""Self-certifying user ids, signed device lists, auth messages."""

from __future__ import annotations

import nacl.signing
import pytest

from relay.protocol import (
    Device,
    DeviceList,
    ErrorCode,
    RemoteProtocolError,
    auth_message,
    is_user_id,
    key_from_user_id,
    peer_auth_message,
    sign_device_list,
    user_id_from_key,
    verify_device_list,
    verify_signature,
)
from relay.protocol.frames import SignedDeviceList


def _account():
    sk = nacl.signing.SigningKey.generate()
    return sk, user_id_from_key(bytes(sk.verify_key))


def _list(uid: str, version: int = 1) -> DeviceList:
    return DeviceList(uid, version, (Device(0, b"e" * 32, b"c" * 32, "laptop", 1),), 100)


def test_user_id_round_trip() -> None:
    sk, uid = _account()
    assert len(uid) == 52 and uid == uid.lower() and is_user_id(uid)
    assert key_from_user_id(uid) == bytes(sk.verify_key)
    assert not is_user_id(uid.upper()) and not is_user_id(uid[:-1]) and not is_user_id("1" * 52)


@pytest.mark.parametrize(
    "bad",
    ["", "a" * 51, "a" * 53, "a" * 51 + "1", "a" * 51 + "=", "a" * 51 + "\n", "a" * 52 + "\n",
     "\u00e9" * 52, "\u00df" * 52, "\u0430" * 52, "a" * 26 + "\x00" + "a" * 25, b"a" * 52, None, 52],
)
def test_malformed_user_ids_are_refused_not_raised(bad) -> None:
    # Non-ASCII look-alikes used to raise ValueError from the base32 decoder, which
    # a node would have answered with ``internal`` and a close.
    assert is_user_id(bad) is False
    with pytest.raises(RemoteProtocolError) as info:
        key_from_user_id(bad)
    assert info.value.code is ErrorCode.BAD_REQUEST


def test_every_base32_letter_is_accepted() -> None:
    alphabet = "abcdefghijklmnopqrstuvwxyz234567"
    for i in range(0, 52, 4):
        uid = (alphabet * 2)[i:i + 52].ljust(52, "a")
        assert is_user_id(uid) and len(key_from_user_id(uid)) == 32


def test_device_list_sign_verify() -> None:
    sk, uid = _account()
    signed = sign_device_list(sk, _list(uid, 3))
    parsed = verify_device_list(signed, uid)
    assert parsed.version == 3 and parsed.device_ids == {0}
    assert parsed.device(0).name == "laptop" and parsed.device(1) is None


def test_device_list_forged_signature() -> None:
    sk, uid = _account()
    other, _ = _account()
    body = _list(uid).encode()
    forged = SignedDeviceList(body, other.sign(body).signature)
    with pytest.raises(RemoteProtocolError) as info:
        verify_device_list(forged)
    assert info.value.code is ErrorCode.UNAUTHORIZED
    with pytest.raises(ValueError):
        sign_device_list(other, _list(uid))


@pytest.mark.parametrize("body", [b"", b"\x01", b"\x90", b"\x80"])
def test_device_list_malformed(body: bytes) -> None:
    with pytest.raises(RemoteProtocolError) as info:
        verify_device_list(SignedDeviceList(body, b"s" * 64))
    assert info.value.code is ErrorCode.BAD_REQUEST


def test_auth_messages_are_domain_separated() -> None:
    sk, uid = _account()
    nonce = b"n" * 32
    m1 = auth_message(nonce, "n1", uid, 0)
    m2 = peer_auth_message(nonce, "n1", "n2", "rv")
    assert m1 != m2 and m1 != auth_message(nonce, "n2", uid, 0)
    sig = sk.sign(m1).signature
    assert verify_signature(bytes(sk.verify_key), m1, sig)
    assert not verify_signature(bytes(sk.verify_key), m2, sig)
    assert not verify_signature(b"short", m1, sig)
