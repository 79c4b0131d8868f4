"""cli.crypto: device identities, Olm round trips via vodozemac, fingerprints (no network)."""

from __future__ import annotations

import nacl.signing
import pytest

from cli.session import crypto
from relay.protocol import user_id_from_key, verify_device_list, verify_signature


def _bob_with_keys(n: int = 3) -> crypto.DeviceIdentity:
    bob = crypto.DeviceIdentity()
    bob.generate_one_time_keys(n)
    return bob


def _outbound(alice: crypto.DeviceIdentity, bob: crypto.DeviceIdentity):
    otk = bob.unpublished_one_time_keys()[0]
    return alice.create_outbound_session(bob.curve25519, otk.key)


def test_identity_keys_are_raw_32_bytes_and_signatures_verify_with_pynacl():
    dev = crypto.DeviceIdentity()
    assert len(dev.ed25519) == 32 and len(dev.curve25519) == 32
    sig = dev.sign(b"challenge")
    assert len(sig) == 64
    assert verify_signature(dev.ed25519, b"challenge", sig)
    assert not verify_signature(dev.ed25519, b"other", sig)


def test_one_time_and_fallback_keys_are_listed_until_published():
    dev = crypto.DeviceIdentity()
    dev.generate_one_time_keys(crypto.ONE_TIME_KEYS_TARGET)
    dev.generate_fallback_key()
    keys = dev.unpublished_one_time_keys()
    assert len(keys) == 100 and len({k.key_id for k in keys}) == 100
    assert all(len(k.key) == 32 for k in keys)
    assert dev.unpublished_fallback_key() is not None
    dev.mark_keys_as_published()
    assert dev.unpublished_one_time_keys() == []
    assert dev.unpublished_fallback_key() is None


def test_olm_prekey_then_normal_messages_round_trip():
    alice, bob = crypto.DeviceIdentity(), _bob_with_keys()
    a_session = _outbound(alice, bob)
    first = crypto.encrypt(a_session, b"hello bob")
    assert first[0] == crypto.PREKEY
    text, b_session, new = crypto.decrypt(bob, [], alice.curve25519, first)
    assert (text, new) == (b"hello bob", True)
    # A second pre-key message of the same session matches the existing session.
    second = crypto.encrypt(a_session, b"again")
    assert second[0] == crypto.PREKEY
    text, session, new = crypto.decrypt(bob, [b_session], alice.curve25519, second)
    assert (text, new, session) == (b"again", False, b_session)
    reply = crypto.encrypt(b_session, b"hi alice")
    assert reply[0] == crypto.NORMAL
    assert crypto.decrypt(alice, [a_session], bob.curve25519, reply)[0] == b"hi alice"
    after = crypto.encrypt(a_session, b"normal now")
    assert after[0] == crypto.NORMAL
    assert crypto.decrypt(bob, [b_session], alice.curve25519, after)[0] == b"normal now"


def test_failed_decrypt_does_not_consume_the_one_time_key():
    alice, bob = crypto.DeviceIdentity(), _bob_with_keys(1)
    good = crypto.encrypt(_outbound(alice, bob), b"secret")
    tampered = good[:-1] + bytes([good[-1] ^ 0x01])
    with pytest.raises(crypto.DecryptError):
        crypto.decrypt(bob, [], alice.curve25519, tampered)
    # Wrong sender identity key: also rejected without consuming the key.
    with pytest.raises(crypto.DecryptError):
        crypto.decrypt(bob, [], crypto.DeviceIdentity().curve25519, good)
    text, _, new = crypto.decrypt(bob, [], alice.curve25519, good)
    assert (text, new) == (b"secret", True)
    # Now the key is consumed: a replayed pre-key message cannot open a second session.
    with pytest.raises(crypto.DecryptError):
        crypto.decrypt(bob, [], alice.curve25519, good)


def test_normal_message_without_session_and_garbage_are_decrypt_errors():
    alice, bob = crypto.DeviceIdentity(), _bob_with_keys()
    s = _outbound(alice, bob)
    crypto.decrypt(bob, [], alice.curve25519, crypto.encrypt(s, b"x"))
    for body in [b"", b"\x07abc", b"\x00not olm", b"\x01not olm"]:
        with pytest.raises(crypto.DecryptError):
            crypto.decrypt(bob, [], alice.curve25519, body)


def test_pickles_round_trip_and_wrong_key_fails():
    alice, bob = crypto.DeviceIdentity(), _bob_with_keys()
    key = bytes(range(32))
    restored = crypto.DeviceIdentity.from_pickle(alice.pickle(key), key)
    assert restored.curve25519 == alice.curve25519 and restored.ed25519 == alice.ed25519
    with pytest.raises(crypto.CryptoError):
        crypto.DeviceIdentity.from_pickle(alice.pickle(key), bytes(32))
    s = _outbound(alice, bob)
    s2 = crypto.session_from_pickle(crypto.session_pickle(s, key), key)
    assert s2.session_id == s.session_id


def test_device_list_signed_by_account_key_verifies():
    account = crypto.new_account_key()
    dev = crypto.DeviceIdentity()
    parsed, signed = crypto.make_device_list(
        account, 1, [crypto.DeviceEntry(0, dev.ed25519, dev.curve25519, "phone", 1700000000)]
    )
    uid = crypto.account_user_id(account)
    assert parsed.user_id == uid
    again = verify_device_list(signed, uid)
    assert again.devices[0].curve25519 == dev.curve25519 and again.version == 1


def test_safety_fingerprint_is_stable_signal_style():
    key = bytes(range(32))
    uid = user_id_from_key(key)
    fp = crypto.safety_fingerprint(key, uid)
    # Regression vector: the format and the value must never change between releases.
    assert fp == "27320 47349 06512 87775 77506 22230"
    assert crypto.safety_fingerprint(key, uid) == fp
    other = bytes(nacl.signing.SigningKey.generate().verify_key)
    fp2 = crypto.safety_fingerprint(other, user_id_from_key(other))
    groups = fp2.split(" ")
    assert len(groups) == 6 and all(len(g) == 5 and g.isdigit() for g in groups)
    assert fp2 != fp
