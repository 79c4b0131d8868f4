"""cli.state: encrypted-at-rest device store, atomic writes, lock, device-list cache (no network)."""

from __future__ import annotations

import os
import stat
import uuid

import pytest
from nacl.pwhash import argon2id

from cli.client import init_account
from cli.session import crypto, vault
from cli.session.state import (
    KEY_FILE,
    SEEN_LIMIT,
    STATE_FILE,
    AlreadyInitialized,
    DeviceListRejected,
    NotInitialized,
    StateError,
    StateLocked,
    create_state,
    open_state,
    seen_key,
)
from relay.protocol.frames import SignedDeviceList


def _new_home(tmp_path, name="alice"):
    home = tmp_path / name
    with create_state(home, name=name, relay_url="ws://127.0.0.1:1") as state:
        init_account(state)
    return home


def _all_bytes(home) -> bytes:
    return b"".join(p.read_bytes() for p in home.rglob("*") if p.is_file())


def test_round_trip_keeps_identity_contacts_sessions_and_history(tmp_path):
    home = _new_home(tmp_path)
    peer = crypto.DeviceIdentity()
    peer.generate_one_time_keys(1)
    with open_state(home) as state:
        uid, ed, curve = state.user_id, state.identity.ed25519, state.identity.curve25519
        session = state.identity.create_outbound_session(
            peer.curve25519, peer.unpublished_one_time_keys()[0].key)
        state.add_session("u" * 52, 3, peer.curve25519, session)
        state.contacts["bob"] = "b" * 52
        state.history.append({"id": "00" * 16, "direction": "out", "text": "t"})
        assert state.mark_seen(seen_key("x", b"\x01" * 16))
        state.save()
    with open_state(home) as state:
        assert (state.user_id, state.identity.ed25519, state.identity.curve25519) == (uid, ed, curve)
        assert state.account_key is not None and crypto.account_user_id(state.account_key) == uid
        assert state.contacts == {"bob": "b" * 52}
        assert state.session_set("u" * 52, 3).sessions[0].session_id == session.session_id
        assert state.find_history("00" * 16)["text"] == "t"
        assert not state.mark_seen(seen_key("x", b"\x01" * 16))
        assert state.own_list().version == 1
        assert state.published_version == 0


def test_home_files_hold_no_plaintext_or_private_keys(tmp_path):
    home = _new_home(tmp_path)
    marker = f"plaintext-marker-{uuid.uuid4().hex}"
    with open_state(home) as state:
        state.contacts[marker] = "b" * 52
        state.history.append({"id": "11" * 16, "direction": "in", "text": marker})
        seed = bytes(state.account_key)
        state.save()
    data = _all_bytes(home)
    assert marker.encode() not in data
    assert seed not in data and seed.hex().encode() not in data
    assert b"alice" not in data  # the display name is inside the sealed box too
    assert stat.S_IMODE(os.stat(home / KEY_FILE).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(home / STATE_FILE).st_mode) == 0o600
    assert not list(home.glob("*.tmp"))


def test_passphrase_mode_has_no_key_file_and_needs_the_passphrase(tmp_path, monkeypatch):
    # Cheaper Argon2id for the test; the cost is read back from the file header.
    monkeypatch.setattr(vault, "PASSPHRASE_OPSLIMIT", argon2id.OPSLIMIT_MIN)
    monkeypatch.setattr(vault, "PASSPHRASE_MEMLIMIT", argon2id.MEMLIMIT_MIN)
    monkeypatch.setenv("WA_PASSPHRASE", "correct horse battery staple")
    home = _new_home(tmp_path)
    assert not (home / KEY_FILE).exists()
    with open_state(home) as state:
        assert state.name == "alice"
    monkeypatch.setenv("WA_PASSPHRASE", "wrong")
    with pytest.raises(StateError, match="wrong key or passphrase"):
        with open_state(home):
            pass
    monkeypatch.delenv("WA_PASSPHRASE")
    with pytest.raises(StateError, match="WA_PASSPHRASE"):
        with open_state(home):
            pass


def test_missing_and_existing_homes(tmp_path):
    with pytest.raises(NotInitialized):
        with open_state(tmp_path / "nobody"):
            pass
    home = _new_home(tmp_path)
    with pytest.raises(AlreadyInitialized):
        with create_state(home, name="x", relay_url="ws://127.0.0.1:1"):
            pass
    (home / KEY_FILE).write_bytes(os.urandom(32))
    with pytest.raises(StateError, match="cannot decrypt"):
        with open_state(home):
            pass


def test_second_process_on_one_home_waits_then_fails_clearly(tmp_path):
    home = _new_home(tmp_path)
    with open_state(home):
        with pytest.raises(StateLocked, match=f"in use by wa-cli process {os.getpid()} "):
            with open_state(home, lock_timeout=0.1):
                pass
        with open_state(home, lock_timeout=0.1, readonly=True) as reader:  # beside the writer
            assert reader.name == "alice"
            with pytest.raises(StateError, match="read-only"):
                reader.save()
    with open_state(home, lock_timeout=0.1) as state:  # released on exit
        assert state.name == "alice"


def _signed_list(account, version, devices):
    return crypto.make_device_list(account, version, devices)[1]


def test_device_list_cache_rejects_forgery_and_rollback_and_drops_stale_sessions(tmp_path):
    home = _new_home(tmp_path)
    bob_account = crypto.new_account_key()
    bob = crypto.account_user_id(bob_account)
    d0, d0b = crypto.DeviceIdentity(), crypto.DeviceIdentity()
    entry = crypto.DeviceEntry(0, d0.ed25519, d0.curve25519, "phone", 1)
    v2 = _signed_list(bob_account, 2, [entry])
    with open_state(home) as state:
        assert state.remember_device_list(v2, bob).version == 2
        d0.generate_one_time_keys(1)
        session = state.identity.create_outbound_session(
            d0.curve25519, d0.unpublished_one_time_keys()[0].key)
        state.add_session(bob, 0, d0.curve25519, session)
        # Forged: signed by another account key.
        forged = _signed_list(crypto.new_account_key(), 3, [entry])
        with pytest.raises(DeviceListRejected):
            state.remember_device_list(forged, bob)
        bad_sig = SignedDeviceList(body=v2.body, signature=bytes(64))
        with pytest.raises(DeviceListRejected):
            state.remember_device_list(bad_sig, bob)
        with pytest.raises(DeviceListRejected, match="rolled back"):
            state.remember_device_list(_signed_list(bob_account, 1, [entry]), bob)
        other_v2 = _signed_list(
            bob_account, 2, [crypto.DeviceEntry(0, d0.ed25519, d0.curve25519, "tablet", 1)])
        with pytest.raises(DeviceListRejected, match="two different"):
            state.remember_device_list(other_v2, bob)
        assert state.remember_device_list(v2, bob).version == 2  # same list again: fine
        assert state.session_set(bob, 0) is not None
        # Version 3 replaces device 0's keys: its old sessions are dropped.
        v3 = _signed_list(bob_account, 3, [crypto.DeviceEntry(0, d0b.ed25519, d0b.curve25519,
                                                              "phone", 2)])
        assert state.remember_device_list(v3, bob).version == 3
        assert state.session_set(bob, 0) is None


def test_seen_set_is_bounded(tmp_path):
    home = _new_home(tmp_path)
    with open_state(home) as state:
        for i in range(SEEN_LIMIT + 5):
            state.mark_seen(seen_key("s", i.to_bytes(16, "big")))
        assert len(state.seen) == SEEN_LIMIT
        assert state.mark_seen(seen_key("s", (0).to_bytes(16, "big")))  # oldest forgotten
        assert not state.mark_seen(seen_key("s", (SEEN_LIMIT + 4).to_bytes(16, "big")))


async def test_async_save_writes_latest_state(tmp_path):
    home = _new_home(tmp_path)
    with open_state(home) as state:
        state.contacts["a"] = "a" * 52
        await state.asave()
        state.contacts["b"] = "b" * 52
        await state.asave()
    with open_state(home) as state:
        assert sorted(state.contacts) == ["a", "b"]
