"""The public sending API of :class:`cli.client.Client` used by cli.group_messaging:
``device_list`` (cached, fresh, cached fallback when the home is unreachable),
``encrypt`` (one decryptable copy per device except this one) and
``request_encrypted`` (state durable before the frame is written). No network: the
relay's answers are scripted."""

from __future__ import annotations

import pytest
import trio
from test_cli_forged_lists import Relay, bob_list, pair  # noqa: F401 (pair is a fixture)

from cli.client import Client
from cli.errors import RelayError
from cli.session import crypto
from relay.protocol.frames import Claimed, ClaimedKey, Devices, Error, Send, Sent

DEADLINE = 10


async def test_device_list_cached_fresh_and_fallback(pair):  # noqa: F811
    alice, bob = pair
    v2 = bob_list(bob, 2, ghost=False)
    answers = {"get_devices": lambda f: Devices(id=1, device_list=v2)}
    client = Client(alice, Relay(answers))
    with trio.fail_after(DEADLINE):
        assert (await client.device_list(bob.user_id)).version == 1  # cached, no request
        assert (await client.device_list(bob.user_id, fresh=True)).version == 2
        answers["get_devices"] = lambda f: Error(id=1, code="unavailable")
        assert (await client.device_list(bob.user_id, fresh=True)).version == 2  # fallback
        stranger = crypto.account_user_id(crypto.new_account_key())
        with pytest.raises(RelayError, match="unavailable"):  # nothing cached to fall back on
            await client.device_list(stranger)


async def test_encrypt_makes_one_decryptable_copy_per_other_device(pair):  # noqa: F811
    alice, bob = pair
    otks = iter(bob.identity.unpublished_one_time_keys())
    relay = Relay({"claim_keys": lambda f: Claimed(id=1, keys=[
        ClaimedKey(device_id=d, key_id=(k := next(otks)).key_id, key=k.key, fallback=False)
        for d in f["device_ids"]])})
    client = Client(alice, relay)
    with trio.fail_after(DEADLINE):
        lists = {bob.user_id: await client.device_list(bob.user_id),
                 alice.user_id: alice.own_list()}  # only this device: no copy for it
        (recipient,) = await client.encrypt(lists, b"plain")
        assert (recipient.user_id, recipient.devices_version) == (bob.user_id, 1)
        (copy,) = recipient.copies
        plaintext, _, is_new = crypto.decrypt(bob.identity, [], alice.identity.curve25519,
                                              copy.body)
        assert (plaintext, is_new, copy.device_id) == (b"plain", True, 0)
        assert [t for t, _ in relay.log] == ["claim_keys"]
        (again,) = await client.encrypt(lists, b"second")  # the session is reused
        assert [t for t, _ in relay.log] == ["claim_keys"] and again.copies[0].body != copy.body


async def test_request_encrypted_saves_before_the_frame_leaves(pair):  # noqa: F811
    alice, bob = pair
    events: list[str] = []
    relay = Relay({"send": lambda f: events.append("send") or Sent(id=1, status="stored")})
    real_asave = alice.asave

    async def asave() -> None:
        events.append("save")
        await real_asave()

    alice.asave = asave
    client = Client(alice, relay)
    with trio.fail_after(DEADLINE):
        answer = await client.request_encrypted(Send, msg_id=bytes(16), recipients=[])
    assert answer.status == "stored" and events == ["save", "send"]
