"""A lying relay cannot make a client encrypt to a ghost device (no network: the relay's
answers are scripted). Device lists signed by the wrong key, or whose version does not
grow, are refused on every path: ``stale_devices``, ``get_devices`` and ``device_list``
notices."""

from __future__ import annotations

from contextlib import ExitStack

import msgpack
import pytest
import trio
from test_cli_linkcode import forged_list

from cli.client import Client, DevicesChanged, Dropped, init_account
from cli.errors import RelayError, SendFailed
from cli.session import crypto
from cli.session.state import DeviceListRejected, create_state
from relay.protocol.frames import (
    Claimed,
    ClaimedKey,
    Deliver,
    DeliverItem,
    Devices,
    Envelope,
    Error,
    Sent,
)

GHOST = 9
DEADLINE = 10


class Relay:
    """Stands in for cli.connection.Connection; ``answers[type]`` -> frame, or an
    ``Error`` frame to raise as ``RelayError``. Every request is logged."""

    url = "ws://scripted"
    node_id = "n0"

    def __init__(self, answers: dict) -> None:
        self.otk_count = 100
        self.log: list = []
        self.answers = answers
        self.push, self.pushes = trio.open_memory_channel(100)
        self.on_key_count = None

    async def send(self, frame_cls, *, stream=False, **fields):
        self.log.append((frame_cls.TYPE, fields))
        return 0

    async def request(self, frame_cls, **fields):
        self.log.append((frame_cls.TYPE, fields))
        answer = self.answers[frame_cls.TYPE](fields)
        if isinstance(answer, Error):
            raise RelayError(answer)
        return answer

    def copies_sent(self) -> set[tuple[str, int]]:
        return {(r.user_id, c.device_id) for t, f in self.log if t == "send"
                for r in f["recipients"] for c in r.copies}


@pytest.fixture
def pair(tmp_path):
    """alice and bob (primaries, no network); alice caches bob's list version 1."""
    with ExitStack() as stack:
        states = []
        for name in ("alice", "bob"):
            s = stack.enter_context(create_state(tmp_path / name, name=name, relay_url="ws://x"))
            init_account(s)
            states.append(s)
        alice, bob = states
        alice.remember_device_list(bob.device_lists[bob.user_id].signed, bob.user_id)
        yield alice, bob


def bob_list(bob, version: int, ghost: bool = True, key=None):
    """Bob's list ``version`` (plus a ghost device), signed by ``key`` (default: bob's)."""
    me = bob.own_list().device(0)
    entries = [crypto.DeviceEntry(0, me.ed25519, me.curve25519, "primary", 1)]
    if ghost:
        spy = crypto.DeviceIdentity()
        entries.append(crypto.DeviceEntry(GHOST, spy.ed25519, spy.curve25519, "ghost", 2))
    dl, signed = crypto.make_device_list(bob.account_key, version, entries)
    return forged_list(dl, key) if key is not None else signed


def relay_for(alice, bob, stale_list):
    otks = iter(bob.identity.unpublished_one_time_keys())
    return Relay({
        "claim_keys": lambda f: Claimed(id=1, keys=[
            ClaimedKey(device_id=d, key_id=(k := next(otks)).key_id, key=k.key, fallback=False)
            for d in f["device_ids"]]),
        "send": lambda f: Error(id=1, code="stale_devices", user_id=bob.user_id,
                                device_list=stale_list),
        "get_devices": lambda f: Devices(id=1, device_list=stale_list),
    })


async def test_stale_devices_with_a_list_signed_by_another_key_is_refused(pair):
    alice, bob = pair
    relay = relay_for(alice, bob, bob_list(bob, 2, key=crypto.new_account_key()))
    with trio.fail_after(DEADLINE), pytest.raises(
            DeviceListRejected, match="not signed by the user_id's account key"):
        await Client(alice, relay).send_text(bob.user_id, "hi")
    assert [t for t, _ in relay.log if t == "send"] == ["send"]  # no second round
    assert relay.copies_sent() == {(bob.user_id, 0)}
    assert alice.device_lists[bob.user_id].parsed.version == 1


@pytest.mark.parametrize("version", [1, 0])
async def test_stale_devices_with_a_list_that_does_not_grow_is_refused(pair, version):
    alice, bob = pair
    if version == 0:  # an older list than the cached one: bob signs v2 first, serves v1 after
        alice.remember_device_list(bob_list(bob, 2, ghost=False), bob.user_id)
        served = bob.device_lists[bob.user_id].signed
    else:  # the same version with other contents
        served = bob_list(bob, 1)
    relay = relay_for(alice, bob, served)
    with trio.fail_after(DEADLINE), pytest.raises((SendFailed, DeviceListRejected)):
        await Client(alice, relay).send_text(bob.user_id, "hi")
    assert [t for t, _ in relay.log if t == "send"] == ["send"]
    assert (bob.user_id, GHOST) not in relay.copies_sent()


async def test_a_forged_fresh_list_is_refused_before_anything_is_encrypted(pair):
    alice, bob = pair
    del alice.device_lists[bob.user_id]
    relay = relay_for(alice, bob, bob_list(bob, 5, key=crypto.new_account_key()))
    with trio.fail_after(DEADLINE), pytest.raises(DeviceListRejected):
        await Client(alice, relay).send_text(bob.user_id, "hi")
    assert relay.copies_sent() == set()
    assert [t for t, _ in relay.log] == ["get_devices"]


async def test_a_genuine_new_list_is_used_after_stale_devices(pair):
    alice, bob = pair
    genuine = bob_list(bob, 2)
    relay = relay_for(alice, bob, genuine)
    rounds = iter([Error(id=1, code="stale_devices", user_id=bob.user_id, device_list=genuine),
                   Sent(id=1, status="stored")])
    relay.answers["send"] = lambda f: next(rounds)
    with trio.fail_after(DEADLINE):
        assert (await Client(alice, relay).send_text(bob.user_id, "hi")).status == "stored"
    assert relay.copies_sent() == {(bob.user_id, 0), (bob.user_id, GHOST)}  # bob signed it


async def test_three_stale_rounds_give_a_clear_error(pair):
    alice, bob = pair
    lists = iter([bob_list(bob, v) for v in (2, 3, 4)])
    relay = relay_for(alice, bob, None)
    relay.answers["send"] = lambda f: Error(id=1, code="stale_devices", user_id=bob.user_id,
                                            device_list=next(lists))
    with trio.fail_after(DEADLINE), pytest.raises(
            SendFailed, match="kept changing; gave up after 3 attempts"):
        await Client(alice, relay).send_text(bob.user_id, "hi")
    assert [t for t, _ in relay.log].count("send") == 3


def _notice(seq, bob, signed):
    body = msgpack.packb({"body": signed.body, "signature": signed.signature})
    return Deliver(id=0, items=[DeliverItem(seq, Envelope(
        msg_id=bytes([seq]) * 16, sender_user=bob.user_id, sender_device=0, ts=1,
        kind="device_list", body=body))])


async def test_device_list_notices_are_verified(pair):
    alice, bob = pair
    alice.contacts["bob"] = bob.user_id
    relay = Relay({})
    client = Client(alice, relay)
    v2 = bob_list(bob, 2)
    for seq, signed in enumerate([bob_list(bob, 3, key=crypto.new_account_key()), v2, v2,
                                  bob.device_lists[bob.user_id].signed], start=1):
        relay.push.send_nowait(_notice(seq, bob, signed))
    relay.push.send_nowait(Deliver(id=0, items=[DeliverItem(5, Envelope(
        msg_id=b"\x05" * 16, sender_user=bob.user_id, sender_device=0, ts=1,
        kind="device_list", body=b"\x93garbage"))]))
    receiver = client.receive()
    with trio.fail_after(5):
        forged, added, bad = [await receiver.__anext__() for _ in range(3)]
    assert isinstance(forged, Dropped) and "not signed by the user_id's account key" in forged.reason
    assert added == DevicesChanged(bob.user_id, "bob", 2, ((GHOST, "ghost"),), ())
    assert isinstance(bad, Dropped)  # the repeat (v2) and the older v1 are silently acked
    assert alice.device_lists[bob.user_id].parsed.version == 2
    assert relay.log[-1] == ("ack", {"seq": 5})
