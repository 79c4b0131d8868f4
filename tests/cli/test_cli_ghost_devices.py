"""Devices that cannot receive (listed, no keys ever uploaded: a link that did not
complete) never stop a send, and a primary withdraws the devices of a link that did
not complete on its next connection (issue 15, item 12). Real in-process nodes."""

from __future__ import annotations

import logging
import time
from contextlib import ExitStack

import trio
from cli_cluster import alice_and_bob, drain, run_cluster

from cli.client import Message, open_client
from cli.features import devices
from cli.features.devices import publish_own_list
from cli.session import crypto

DEADLINE = 30


def _ghost(device_id: int, age: float = 0.0) -> crypto.DeviceEntry:
    """A device entry whose keys belong to nobody (it will never upload keys)."""
    ident = crypto.DeviceIdentity()
    return crypto.DeviceEntry(device_id, ident.ed25519, ident.curve25519, "ghost",
                              int(time.time() - age))


async def _add_ghost(state, device_id: int, age: float = 0.0) -> None:
    async with open_client(state) as client:
        own = state.own_list()
        entries = devices._entries(own.devices) + [_ghost(device_id, age)]
        await publish_own_list(client, entries, own.version + 1)


async def test_a_send_skips_a_device_without_keys_with_a_warning(tmp_path, caplog):
    with trio.fail_after(DEADLINE), ExitStack() as stack:
        async with run_cluster(2) as cluster:
            alice, bob = await alice_and_bob(tmp_path, cluster, stack, apart=True)
            alice.contacts["bob"] = bob.user_id
            await _add_ghost(bob, 5, age=600)  # linked long ago: not waited for
            started = time.monotonic()
            with caplog.at_level(logging.WARNING, logger="cli.features.outbound"):
                async with open_client(alice) as client:
                    result = await client.send_text(bob.user_id, "still delivered")
            assert result.status == "stored"
            assert time.monotonic() - started < 2.5  # no claim retries for an old device
            (warning,) = [r.getMessage() for r in caplog.records if "skipped" in r.message]
            assert "device 5 (ghost) of bob" in warning and bob.user_id in warning
            async with open_client(bob) as client:
                got = [e for e in await drain(client) if isinstance(e, Message)]
            assert [m.text for m in got] == ["still delivered"]


async def test_a_cached_list_naming_a_removed_device_is_refreshed(tmp_path):
    with trio.fail_after(DEADLINE), ExitStack() as stack:
        async with run_cluster(2) as cluster:
            alice, bob = await alice_and_bob(tmp_path, cluster, stack, apart=True)
            await _add_ghost(bob, 3, age=600)
            async with open_client(alice) as client:
                await client.get_devices(bob.user_id)  # alice caches the list with device 3
            assert alice.device_lists[bob.user_id].parsed.device_ids == {0, 3}
            async with open_client(bob) as client:
                await devices.remove_device(client, 3)
            async with open_client(alice) as client:  # claim for 3: unknown_device -> refetch
                assert (await client.send_text(bob.user_id, "hi")).status == "stored"
            assert alice.device_lists[bob.user_id].parsed.device_ids == {0}


async def test_a_recorded_withdrawal_is_finished_by_the_next_connection(tmp_path, caplog):
    with trio.fail_after(DEADLINE), ExitStack() as stack:
        async with run_cluster(1) as cluster:
            alice, bob = await alice_and_bob(tmp_path, cluster, stack)
            await _add_ghost(bob, 1)  # the list went out ...
            bob.pending_withdrawals.add(1)  # ... during a link the process never finished
            bob.pending_withdrawals.add(2)  # and one whose list never got there
            bob.save()
            with caplog.at_level(logging.WARNING, logger="cli.features.devices"):
                async with open_client(bob) as client:
                    served = await client.get_devices(bob.user_id)
            assert served.device_ids == {0} and served.version == 3
            assert bob.pending_withdrawals == set()
            assert [r.getMessage() for r in caplog.records if "withdrew" in r.message] == [
                "withdrew device 1 (ghost) from the account: its linking did not complete"]
            async with open_client(alice) as client:
                assert (await client.send_text(bob.user_id, "hi")).status == "stored"


async def test_a_group_key_is_shared_again_with_a_device_that_had_no_keys(tmp_path):
    """Fault-suite finding 10: a device that got a withheld copy of a sender's group key
    (no keys to claim yet) was recorded as having the key, so it never got it and could
    read none of that sender's group messages. It is now left out of the shared set and
    gets the key on the sender's next group send."""
    from cli.features.group_messaging import create_group, send_group_text

    with trio.fail_after(DEADLINE), ExitStack() as stack:
        async with run_cluster(2) as cluster:
            alice, bob = await alice_and_bob(tmp_path, cluster, stack, apart=True)
            await _add_ghost(bob, 5, age=600)
            async with open_client(alice) as client:
                group = await create_group(client, "g", [bob.user_id])
                await send_group_text(client, "g", "first")
            shared = {(uid, did) for s in alice.groups.outbound.values() for uid, did, _ in s.shared}
            assert (bob.user_id, 0) in shared
            assert (bob.user_id, 5) not in shared  # withheld: it holds no key
            assert group.name == "g"
