"""The client against real relay nodes (in-process, loopback, memory storage): moved,
offline delivery in order and once, key top-up, stale device lists, own-device copies."""

from __future__ import annotations

import time
from contextlib import ExitStack

import trio
from cli_cluster import alice_and_bob, drain, make_account, publish, quiet, run_cluster

from cli.client import BacklogDone, Message, open_client
from cli.session import crypto
from cli.session.state import create_state

DEADLINE = 30


async def test_offline_messages_arrive_once_in_order_across_homes(tmp_path):
    with trio.fail_after(DEADLINE), ExitStack() as stack:
        async with run_cluster(3) as cluster:
            alice = make_account(tmp_path, "alice", cluster, stack)
            bob = make_account(tmp_path, "bob", cluster, stack,
                               not_on=[cluster.home_of(alice.user_id)])
            first_url = alice.relay_url
            home_url = await publish(alice)
            assert home_url == cluster.urls[cluster.home_of(alice.user_id)] != first_url
            assert alice.relay_url == home_url and alice.published_version == 1
            await publish(bob)
            bob.contacts["alice-contact"] = alice.user_id

            texts = ["one", "two ✓ ünïcødé", "three"]
            async with open_client(alice) as client:
                results = [await client.send_text(bob.user_id, t) for t in texts]
            assert [r.status for r in results] == ["stored"] * 3
            assert all(r.to == bob.user_id for r in results)

            async with open_client(bob) as client:
                got = await drain(client)
            assert [m.text for m in got] == texts
            assert [m.msg_id for m in got] == [r.msg_id for r in results]
            for m in got:
                assert isinstance(m, Message)
                assert (m.direction, m.sender_user, m.sender_device, m.peer) == (
                    "in", alice.user_id, 0, alice.user_id)
                assert m.from_name == "alice-contact" and m.declared_name == "alice"
            assert [m.ts for m in got] == sorted(m.ts for m in got)

            async with open_client(bob) as client:
                assert await drain(client) == []  # acknowledged: never shown twice
                reply = await client.send_text(alice.user_id, "back at you")
            assert reply.status == "stored"
            async with open_client(alice) as client:
                (m,) = await drain(client)
            assert (m.text, m.sender_user, m.from_name) == ("back at you", bob.user_id, "bob")


async def test_live_delivery_while_connected(tmp_path):
    with trio.fail_after(DEADLINE), ExitStack() as stack:
        async with run_cluster(2) as cluster:
            alice, bob = await alice_and_bob(tmp_path, cluster, stack)
            async with open_client(bob) as bob_client, open_client(alice) as alice_client:
                receiver = bob_client.receive()
                assert isinstance(await receiver.__anext__(), BacklogDone)
                for i in range(5):
                    await alice_client.send_text(bob.user_id, f"live {i}")
                got = [await receiver.__anext__() for _ in range(5)]
            assert [m.text for m in got] == [f"live {i}" for i in range(5)]


async def test_one_time_keys_are_topped_up(tmp_path):
    with trio.fail_after(DEADLINE), ExitStack() as stack:
        async with run_cluster(1, otk_claim_burst=1000) as cluster:  # claims not throttled
            alice, bob = await alice_and_bob(tmp_path, cluster, stack)
            async with open_client(bob) as bob_client:
                for _ in range(60):
                    (key,) = await bob_client.claim_keys(alice.user_id, [0])
                    assert not key.fallback
                async with open_client(alice) as alice_client:
                    # auth_ok said 40 < 50: topped up to 100 before open_client returned.
                    assert alice_client.otk_count == crypto.ONE_TIME_KEYS_TARGET
                    for _ in range(81):  # below 20: the home pushes key_count while connected
                        await bob_client.claim_keys(alice.user_id, [0])
                    deadline = time.monotonic() + 10
                    while alice_client.otk_count < crypto.ONE_TIME_KEYS_TARGET:
                        assert time.monotonic() < deadline, alice_client.otk_count
                        await trio.sleep(0.02)


async def _bob_with_two_devices(tmp_path, cluster, stack):
    """alice and bob (published), alice has a session with bob's device 0 and bob's
    list v1 cached; then bob publishes list v2 with a second device 1 (what linking
    will do in a later issue). Returns (alice, bob, bob1)."""
    alice, bob = await alice_and_bob(tmp_path, cluster, stack)
    async with open_client(alice) as client:
        assert (await client.send_text(bob.user_id, "before")).status == "stored"
    bob1 = quiet(stack.enter_context(
        create_state(tmp_path / "bob-device-1", name="bob", relay_url=bob.relay_url)))
    bob1.account_key, bob1.user_id, bob1.device_id = None, bob.user_id, 1
    entries = [crypto.DeviceEntry(d.device_id, d.ed25519, d.curve25519, d.name, d.added_at)
               for d in bob.own_list().devices]
    entries.append(crypto.DeviceEntry(1, bob1.identity.ed25519, bob1.identity.curve25519,
                                      "laptop", 2))
    _, v2 = crypto.make_device_list(bob.account_key, 2, entries)
    bob.remember_device_list(v2, bob.user_id)
    bob1.remember_device_list(v2, bob.user_id)
    bob1.published_version = 2
    bob1.identity.generate_one_time_keys(crypto.ONE_TIME_KEYS_TARGET)
    bob1.identity.generate_fallback_key()
    async with open_client(bob) as client:
        await client.publish_device_list()
    await publish(bob1)
    return alice, bob, bob1


async def test_stale_device_list_is_refreshed_and_resent(tmp_path):
    with trio.fail_after(DEADLINE), ExitStack() as stack:
        async with run_cluster(3) as cluster:
            alice, bob, bob1 = await _bob_with_two_devices(tmp_path, cluster, stack)
            async with open_client(alice) as client:  # alice's cache still has version 1
                result = await client.send_text(bob.user_id, "after")
            assert result.status == "stored"
            assert alice.device_lists[bob.user_id].parsed.version == 2
            async with open_client(bob) as client:
                assert [m.text for m in await drain(client)] == ["before", "after"]
            async with open_client(bob1) as client:
                assert [m.text for m in await drain(client)] == ["after"]


async def test_own_other_devices_get_a_copy_of_what_was_sent(tmp_path):
    with trio.fail_after(DEADLINE), ExitStack() as stack:
        async with run_cluster(3) as cluster:
            alice, bob, bob1 = await _bob_with_two_devices(tmp_path, cluster, stack)
            async with open_client(bob) as client:
                await client.send_text(alice.user_id, "from device 0")
            async with open_client(bob1) as client:
                got = await drain(client)
            assert [(m.text, m.direction) for m in got] == [("from device 0", "out")]
            assert got[0].peer == alice.user_id and got[0].sender_device == 0
            async with open_client(alice) as client:
                assert [m.text for m in await drain(client)] == ["from device 0"]


async def test_send_is_queued_when_the_recipient_home_is_down(tmp_path):
    with trio.fail_after(DEADLINE), ExitStack() as stack:
        async with run_cluster(3) as cluster:
            alice, bob = await alice_and_bob(tmp_path, cluster, stack, apart=True)
            async with open_client(alice) as client:
                assert (await client.send_text(bob.user_id, "warm")).status == "stored"
            cluster.stop(cluster.home_of(bob.user_id))
            async with open_client(alice) as client:  # cached list and session are used
                result = await client.send_text(bob.user_id, "while down")
            assert result.status == "queued"
