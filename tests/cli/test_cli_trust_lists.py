"""Issue 10, finding 4: device-list freshness. A home that rolls its database back to
an older, validly signed device list (which still names a removed, stolen device)
cannot make contacts encrypt to that device once they know of the newer list: from a
cached list, or from the list version carried inside any message of the owner's
device. Expired lists and too large version jumps are refused by clients and nodes;
the primary re-signs its list before it expires. Real relay nodes on loopback; the
attacker operates bob's home node (its storage is swapped for an old copy)."""

from __future__ import annotations

import time
from contextlib import ExitStack

import pytest
import trio
from cli_cluster import drain, make_account, publish, quiet, run_cluster

from cli.client import Message, open_client
from cli.errors import RelayError
from cli.session import crypto, listfresh
from cli.session.state import DeviceListRejected, create_state
from relay.protocol.frames import PutDevices
from relay.protocol.identity import MAX_VERSION_STEP
from relay.services.directory import pack_list
from storage.memory import MemoryStorage

DEADLINE = 60


def entries(devices) -> list[crypto.DeviceEntry]:
    return [crypto.DeviceEntry(d.device_id, d.ed25519, d.curve25519, d.name, d.added_at)
            for d in devices]


async def test_rolled_back_device_list_is_refused(tmp_path) -> None:
    with trio.fail_after(DEADLINE), ExitStack() as stack:
        async with run_cluster(3) as cluster:
            bob = make_account(tmp_path, "bob", cluster, stack)
            home = cluster.home_of(bob.user_id)
            alice = make_account(tmp_path, "alice", cluster, stack, not_on=[home])
            carol = make_account(tmp_path, "carol", cluster, stack, not_on=[home])
            for s in (bob, alice, carol):
                await publish(s)
            # bob links a second device (the one that will be stolen): list version 2
            thief = quiet(stack.enter_context(
                create_state(tmp_path / "bob-1", name="bob", relay_url=bob.relay_url)))
            thief.account_key, thief.user_id, thief.device_id = None, bob.user_id, 1
            more = [*entries(bob.own_list().devices), crypto.DeviceEntry(
                1, thief.identity.ed25519, thief.identity.curve25519, "phone", 2)]
            _, v2 = crypto.make_device_list(bob.account_key, 2, more)
            bob.remember_device_list(v2, bob.user_id)
            thief.remember_device_list(v2, bob.user_id)
            thief.identity.generate_one_time_keys(crypto.ONE_TIME_KEYS_TARGET)
            thief.identity.generate_fallback_key()
            async with open_client(bob) as client:
                await client.publish_device_list()
            await publish(thief)
            async with open_client(alice) as client:  # alice caches version 2
                await client.send_text(bob.user_id, "before")
            # the phone is stolen: bob removes it (version 3); alice learns it
            async with open_client(bob) as client:
                assert (await client.remove_device(1)).version == 3
            async with open_client(alice) as client:
                await drain(client)
            assert alice.device_lists[bob.user_id].parsed.version == 3

            # bob's home rolls back to a copy of its database holding version 2
            cluster.stop(home)
            old = MemoryStorage()
            await old.put_device_list(bob.user_id, 2, pack_list(v2))
            cluster.storages[home] = old
            await cluster.start(home)
            async with open_client(thief):  # the stolen device is listed again: keys up
                pass

            # alice knew version 3: the served version 2 is refused, nothing is sent
            async with open_client(alice) as client:
                with pytest.raises(DeviceListRejected, match="rolled back"):
                    await client.send_text(bob.user_id, "after the rollback")

            # carol never saw version 3: she takes version 2 (nothing tells her yet)...
            async with open_client(carol) as client:
                await client.send_text(bob.user_id, "hello bob")
            assert carol.device_lists[bob.user_id].parsed.version == 2
            # ... until a message from bob's own device says "version 3"
            async with open_client(bob) as client:
                await client.send_text(carol.user_id, "hi carol")
            async with open_client(carol) as client:
                got = await drain(client)
                assert [e.text for e in got if isinstance(e, Message)] == ["hi carol"]
                assert carol.highest_list[bob.user_id] == 3
                with pytest.raises(DeviceListRejected, match="rolled back to version 2"):
                    await client.send_text(bob.user_id, "second message")
            # the stolen device got carol's first message only, nothing after the hint
            async with open_client(thief) as client:
                got = await drain(client)
            assert [e.text for e in got if isinstance(e, Message)] == ["hello bob"]


async def test_expired_and_jumping_lists_are_refused_and_the_primary_re_signs(tmp_path) -> None:
    with trio.fail_after(DEADLINE), ExitStack() as stack:
        async with run_cluster(1) as cluster:
            bob = make_account(tmp_path, "bob", cluster, stack)
            alice = make_account(tmp_path, "alice", cluster, stack)
            await publish(bob)
            await publish(alice)
            own = bob.own_list()
            async with open_client(bob) as client:
                # nodes refuse an expired list and a version jump above the bound
                _, expired = crypto.make_device_list(bob.account_key, 2,
                                                     entries(own.devices), lifetime=-60)
                with pytest.raises(RelayError, match="expired"):
                    await client.connection.request(PutDevices, device_list=expired)
                _, jump = crypto.make_device_list(bob.account_key, 2 + MAX_VERSION_STEP,
                                                  entries(own.devices))
                with pytest.raises(RelayError, match="at most"):
                    await client.connection.request(PutDevices, device_list=jump)
            # clients refuse them too (a hostile home could serve them)
            async with open_client(alice) as client:
                assert (await client.device_list(bob.user_id)).version == 1
            with pytest.raises(DeviceListRejected, match="expired"):
                alice.remember_device_list(expired, bob.user_id)
            with pytest.raises(DeviceListRejected, match="jumps"):
                alice.remember_device_list(jump, bob.user_id)

            # a list close to its expiry: the primary re-signs it when it connects
            short = listfresh.REFRESH_BEFORE - 60
            _, soon = crypto.make_device_list(bob.account_key, 2, entries(own.devices),
                                              lifetime=short)
            async with open_client(bob) as client:
                await client.connection.request(PutDevices, device_list=soon)
            bob.device_lists.pop(bob.user_id)
            bob.remember_device_list(soon, bob.user_id)
            async with open_client(bob):
                pass
            fresh = bob.own_list()
            assert fresh.version == 3 and fresh.expires_at > time.time() + short + 3600
            async with open_client(alice) as client:  # contacts get the new one
                assert (await client.device_list(bob.user_id, fresh=True)).version == 3
