"""cli.linkcode and the new device's checks of a linking answer (no network):
code format, malformed codes, history trimming, forged or foreign answers, safety numbers."""

from __future__ import annotations

import base64
import os

import msgpack
import nacl.public
import pytest

from cli.errors import LinkFailed
from cli.features import linkcode
from cli.features.linkcode import DeviceInfo, LinkCode, LinkCodeError, Material
from cli.features.linking import PendingLink
from cli.session import crypto
from relay.protocol import DeviceList, verify_device_list
from relay.protocol.frames import LinkOpened, SignedDeviceList
from relay.protocol.identity import DEVICE_LIST_CONTEXT

UID = "b" * 52


def forged_list(dl: DeviceList, key) -> SignedDeviceList:
    """``dl`` (any user_id) signed by ``key``, which is not that user's account key."""
    body = dl.encode()
    return SignedDeviceList(body=body, signature=key.sign(DEVICE_LIST_CONTEXT + body).signature)


def test_code_round_trip_is_lowercase_base32_of_the_documented_map():
    code = LinkCode("n2", b"\x01" * 16, b"\x02" * 32, b"\x03" * 16)
    text = code.encode()
    assert text.startswith("wa1-") and text == text.lower() and "=" not in text
    raw = base64.b32decode(text[4:].upper() + "=" * (-len(text[4:]) % 8))
    assert msgpack.unpackb(raw) == {"n": "n2", "m": b"\x01" * 16, "h": b"\x02" * 32,
                                    "s": b"\x03" * 16}
    assert LinkCode.decode(text) == code
    assert LinkCode.decode(f"  {text.upper()}\n") == code
    plain = LinkCode("n1", b"\x01" * 16, b"\x02" * 32)  # the spec's {n, m, h} alone
    assert LinkCode.decode(plain.encode()) == plain


def _b32(obj) -> str:
    return "wa1-" + base64.b32encode(msgpack.packb(obj)).decode().rstrip("=").lower()


@pytest.mark.parametrize("text", [
    "", "wa2-abc", "hello", "wa1-", "wa1-!!!!", "wa1-" + "a" * 500,
    _b32([1, 2]), _b32({"n": "n1", "m": b"x" * 15, "h": b"h" * 32}),
    _b32({"n": "n1", "m": b"x" * 16, "h": b"h" * 31}),
    _b32({"n": 5, "m": b"x" * 16, "h": b"h" * 32}),
    _b32({"n": "n1", "m": b"x" * 16, "h": b"h" * 32, "s": b"short"}),
])
def test_malformed_codes_are_rejected(text):
    with pytest.raises(LinkCodeError):
        LinkCode.decode(text)


def test_material_keeps_the_newest_history_under_the_budget():
    signed = crypto.make_device_list(crypto.new_account_key(), 1, [])[1]
    history = [{"id": f"{i:032x}", "direction": "in", "peer": UID, "from": UID, "ts": i,
                "type": "text", "text": "x" * 5000, "from_name": "b", "from_device": 0}
               for i in range(500)]
    m = Material(UID, 1, signed, "bob", {"b": UID}, history)
    data = m.encode()
    assert len(data) <= linkcode.MATERIAL_BUDGET
    back = Material.decode(data)
    assert 100 < len(back.history) < 500
    assert [e["ts"] for e in back.history] == list(range(500 - len(back.history), 500))
    assert back.contacts == {"b": UID} and back.name == "bob"


def test_history_entries_are_cleaned():
    good = {"id": "ab" * 16, "direction": "out", "peer": UID, "from": UID, "ts": 1,
            "text": "t", "resends": 2, "extra": object()}
    assert linkcode.clean_history_entry(good) == {
        "id": "ab" * 16, "direction": "out", "peer": UID, "from": UID, "ts": 1, "text": "t",
        "type": "text", "from_name": "", "from_device": 0}
    for bad in ({**good, "id": "zz"}, {**good, "direction": "sideways"},
                {**good, "peer": "nobody"}, {**good, "ts": "1"}, "text"):
        assert linkcode.clean_history_entry(bad) is None
    assert linkcode.recent_history([good] * 3, limit=2) == [linkcode.clean_history_entry(good)] * 2
    assert linkcode.recent_history([good], limit=0) == []


class _Answer:
    """A new device's pending link (no socket) and helpers to build answers to it."""

    def __init__(self):
        self.identity = crypto.DeviceIdentity()
        self.ephemeral = nacl.public.PrivateKey.generate()
        self.secret = os.urandom(16)
        self.info = DeviceInfo(self.identity.ed25519, self.identity.curve25519,
                               bytes(self.ephemeral.public_key), "laptop")
        self.pending = PendingLink(None, self.identity, self.ephemeral, self.info, self.secret,
                                   LinkOpened(id=2, mailbox_id=b"m" * 16, node_id="n1",
                                              expires_in=120))
        self.account = crypto.new_account_key()

    def material(self, *, key=None, keys=None, device_id=1, secret=None):
        key = key or self.account
        ed, cu = keys or (self.identity.ed25519, self.identity.curve25519)
        _, signed = crypto.make_device_list(key, 2, [
            crypto.DeviceEntry(0, b"\x01" * 32, b"\x02" * 32, "primary", 1),
            crypto.DeviceEntry(1, ed, cu, "laptop", 2)])
        proof = linkcode.link_proof(secret if secret is not None else self.secret, signed)
        return Material(crypto.account_user_id(self.account), device_id, signed, "bob",
                        proof=proof)

    def sealed(self, material, to=None):
        return linkcode.seal(to or bytes(self.ephemeral.public_key), material.encode())


def test_a_genuine_answer_verifies():
    a = _Answer()
    assert a.pending.code.startswith("wa1-")
    assert LinkCode.decode(a.pending.code).digest == linkcode.info_digest(a.info.encode())
    linked = a.pending._verify(a.sealed(a.material()))
    assert (linked.user_id, linked.device_id) == (crypto.account_user_id(a.account), 1)
    assert a.pending.fingerprint == linkcode.device_fingerprint(
        a.identity.ed25519, a.identity.curve25519)


@pytest.mark.parametrize("forge, reason", [
    ("relay", "not made by a device that read this code"),
    ("no_proof", "not made by a device that read this code"),
    ("wrong_signer", "does not verify"),
    ("other_keys", "does not hold this device's keys"),
    ("other_slot", "does not hold this device's keys"),
    ("not_sealed_to_us", "not sealed to this device"),
    ("garbage", "not sealed to this device"),
])
def test_forged_or_foreign_answers_are_refused(forge, reason):
    a = _Answer()
    if forge == "relay":  # knows device_info (so h) but not the code's secret
        body = a.sealed(a.material(secret=os.urandom(16)))
    elif forge == "no_proof":
        m = a.material()
        m.proof = None
        body = a.sealed(m)
    elif forge == "wrong_signer":  # a list for the account's user_id signed by another key
        m = a.material()
        m.device_list = forged_list(verify_device_list(m.device_list), crypto.new_account_key())
        m.proof = linkcode.link_proof(a.secret, m.device_list)
        body = a.sealed(m)
    elif forge == "other_keys":
        body = a.sealed(a.material(keys=(b"\x07" * 32, b"\x08" * 32)))
    elif forge == "other_slot":
        body = a.sealed(a.material(device_id=0))
    elif forge == "not_sealed_to_us":
        body = a.sealed(a.material(), to=bytes(nacl.public.PrivateKey.generate().public_key))
    else:
        body = b"\x00" * 100
    with pytest.raises(LinkFailed, match=reason):
        a.pending._verify(body)


def test_device_info_round_trip_and_bad_info():
    info = DeviceInfo(b"\x01" * 32, b"\x02" * 32, b"\x03" * 32, "tablet")
    assert DeviceInfo.decode(info.encode()) == info
    with pytest.raises(LinkCodeError):
        DeviceInfo.decode(msgpack.packb({"ed25519": b"x", "name": "n"}))
    with pytest.raises(LinkCodeError):
        DeviceInfo.decode(b"\xc1")


def test_safety_number_is_symmetric_and_depends_on_account_keys_only():
    a = crypto.account_user_id(crypto.new_account_key())
    b = crypto.account_user_id(crypto.new_account_key())
    c = crypto.account_user_id(crypto.new_account_key())
    ab = crypto.safety_number(a, b)
    assert ab == crypto.safety_number(b, a)
    groups = ab.split()
    assert len(groups) == 12 and all(len(g) == 5 and g.isdigit() for g in groups)
    halves = {" ".join(groups[:6]), " ".join(groups[6:])}
    assert halves == {crypto.safety_fingerprint(crypto.key_from_user_id(u), u) for u in (a, b)}
    assert crypto.safety_number(a, c) != ab
