"""Issue 10, findings 5 and 6: a forged bounce re-encrypts nothing (a hostile peer node
bounces a message that was delivered, after the recipient linked a new device); the
own home's bounce resends to the devices the message was first sent to only; a device
that cannot decrypt a copy asks for it end to end and gets it on a fresh session.
Real relay nodes on loopback; the hostile peer authenticates with a node's key."""

from __future__ import annotations

from contextlib import ExitStack

import trio
from cli_cluster import drain, link_second_device, make_account, publish, run_cluster

from cli.client import Bounce, Dropped, Message, open_client
from cli.features.group_messaging import add_member, create_group, send_group_text
from relay.protocol.frames import BounceBack, Envelope, Ok
from relay.protocol.stored import encode_bounce_body, encode_envelope
from tests.relay.relay_harness import peer_session

DEADLINE = 60


def texts(events) -> list[str]:
    return [e.text for e in events if isinstance(e, Message)]


async def test_forged_bounce_re_encrypts_nothing(tmp_path) -> None:
    with trio.fail_after(DEADLINE), ExitStack() as stack:
        async with run_cluster(2) as cluster:
            alice = make_account(tmp_path, "alice", cluster, stack)
            a_home = cluster.home_of(alice.user_id)
            bob = make_account(tmp_path, "bob", cluster, stack, not_on=[a_home])
            carol = make_account(tmp_path, "carol", cluster, stack, not_on=[a_home])
            b_home = cluster.home_of(bob.user_id)
            for s in (alice, bob, carol):
                await publish(s)
            async with open_client(alice) as client:
                secret = (await client.send_text(bob.user_id, "secret")).msg_id
                await create_group(client, "g", [bob.user_id])
                group_secret = (await send_group_text(client, "g", "group secret")).msg_id
            assert sorted(texts(await _events(bob))) == ["group secret", "secret"]
            # later, bob links a new device and carol joins the group
            bob1 = await link_second_device(tmp_path, stack, bob)
            async with open_client(alice) as client:
                await add_member(client, "g", carol.user_id)

            # bob's home node (hostile, with its real node key) bounces both messages to
            # alice's home, claiming to be alice's home
            for msg_id in (secret, group_secret):
                body = encode_bounce_body("stale_devices", "device list changed",
                                          bob.user_id, "home")
                async with peer_session(cluster, b_home, a_home) as peer:
                    answer = await peer.request(BounceBack(id=1, envelope=Envelope(
                        msg_id=msg_id, sender_user=alice.user_id, sender_device=0, ts=1,
                        kind="bounce", body=body)))
                    assert isinstance(answer, Ok), answer
            async with open_client(alice) as client:
                bounces = [e for e in await drain(client) if isinstance(e, Bounce)]
            assert {b.msg_id for b in bounces} == {secret, group_secret}
            assert all(b.resent_status is None and "not resent" in b.message for b in bounces)
            # nothing reached the new device or the new member
            assert texts(await _events(bob1)) == []
            assert "group secret" not in texts(await _events(carol))

            # the own home's bounce (enqueued by alice's home itself): resent, but only
            # to the device it was first sent to (bob's device 0, which drops the
            # duplicate); the new device gets a withheld copy and reads nothing
            storage = cluster.storages[a_home]
            await storage.enqueue([(alice.user_id, 0, encode_envelope(Envelope(
                msg_id=secret, sender_user=alice.user_id, sender_device=0, ts=1,
                kind="bounce", body=encode_bounce_body("stale_devices", "x", bob.user_id))))])
            async with open_client(alice) as client:
                (bounce,) = [e for e in await drain(client) if isinstance(e, Bounce)]
            assert bounce.resent_status == "stored"
            got = await _events(bob1)
            assert texts(got) == [] and any(isinstance(e, Dropped) and "withheld" in e.reason
                                            for e in got)
            assert texts(await _events(bob)) == []  # already shown: deduplicated


async def _events(state) -> list:
    async with open_client(state) as client:
        return await drain(client)


async def test_undecryptable_copy_is_recovered_by_a_retry_request(tmp_path) -> None:
    with trio.fail_after(DEADLINE), ExitStack() as stack:
        async with run_cluster(2) as cluster:
            alice = make_account(tmp_path, "alice", cluster, stack)
            bob = make_account(tmp_path, "bob", cluster, stack)
            for s in (alice, bob):
                await publish(s)
            async with open_client(alice) as client:
                await client.send_text(bob.user_id, "one")
            assert texts(await _events(bob)) == ["one"]
            # bob's device loses its session with alice's device (a restored backup,
            # a corrupted session): alice's next message cannot be decrypted
            bob.sessions.clear()
            async with open_client(alice) as client:
                await client.send_text(bob.user_id, "two")
            got = await _events(bob)
            assert texts(got) == [] and any(isinstance(e, Dropped) for e in got)
            # bob's device asked alice's device (on a new session); alice answers by
            # receiving, and bob gets the message, on a working session again
            assert texts(await _events(alice)) == []
            assert texts(await _events(bob)) == ["two"]
            async with open_client(alice) as client:
                await client.send_text(bob.user_id, "three")
            assert texts(await _events(bob)) == ["three"]
