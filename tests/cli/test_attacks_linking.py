"""Attacks on the linking flow of finding 17 (``devices approve`` waits for the new
device to reach its home: ``get_devices {keys}``; recorded withdrawals): races and
other accounts must not make a primary keep a ghost or withdraw a device that linked.
Real in-process nodes, the library API (the daemon runs the same code)."""

from __future__ import annotations

from contextlib import ExitStack

import pytest
import trio
from cli_cluster import make_account, publish, run_cluster

from cli.client import open_client
from cli.errors import LinkFailed
from cli.features import devices
from cli.features.linking import complete_link, open_link
from cli.session.state import new_home

DEADLINE = 30


async def test_a_failed_approval_does_not_withdraw_another_in_flight(tmp_path):
    """Two approvals at once on one primary (the daemon serves requests concurrently):
    the one whose device never reached its home was withdrawn with every recorded
    device, including the other's, still within its wait: that device got the account,
    then was withdrawn (its approval failed, "it left the account's list"). A failed
    approval now withdraws its own device only."""
    with trio.fail_after(DEADLINE), ExitStack() as stack:
        async with run_cluster(1) as cluster:
            bob = make_account(tmp_path, "bob", cluster, stack)
            await publish(bob)
            url = cluster.urls[cluster.home_of(bob.user_id)]
            async with open_client(bob) as client, open_link(url, "tablet") as tablet, \
                    open_link(url, "ghost") as ghost, trio.open_nursery() as nursery:
                b_failed = trio.Event()
                approved = []

                async def approve_ghost() -> None:
                    with pytest.raises(LinkFailed, match="did not reach its home"):
                        await devices.approve_link(client, ghost.code, confirm_wait=0.5)
                    b_failed.set()  # the ghost's device never read its material

                async def tablet_device() -> None:
                    with new_home(tmp_path / "tablet") as fresh:
                        linked = await tablet.wait()  # the tablet has the account now
                        nursery.start_soon(approve_ghost)
                        await b_failed.wait()  # and reaches its home a little later
                        await complete_link(_Got(linked), fresh, url)

                nursery.start_soon(tablet_device)
                approved.append(await devices.approve_link(client, tablet.code,
                                                           confirm_wait=10))
                own, keyed = await devices.keyed_devices(client)
            (tablet_id,) = [a.device_id for a in approved]
            assert tablet_id in own.device_ids and tablet_id in keyed
            assert [d.name for d in own.devices] == ["primary", "tablet"]
            assert bob.pending_withdrawals == set()


class _Got:
    """A :class:`~cli.features.linking.PendingLink` whose material was read already."""

    def __init__(self, linked) -> None:
        self._linked = linked

    async def wait(self):
        return self._linked


async def test_only_the_users_own_devices_learn_which_devices_hold_keys(tmp_path):
    """``get_devices {keys}`` answered ``keyed`` to anyone: another account (on the same
    node or through another one) learned which of a user's devices had come online since
    they were linked, without spending a one-time key. Now only the user's own devices
    get ``keyed``."""
    from cli_cluster import alice_and_bob, link_second_device

    from relay.protocol.frames import GetDevices

    with trio.fail_after(DEADLINE), ExitStack() as stack:
        async with run_cluster(2) as cluster:
            alice, bob = await alice_and_bob(tmp_path, cluster, stack, apart=True)
            carol = make_account(tmp_path, "carol", cluster, stack,
                                 accept=lambda u: cluster.home_of(u) == cluster.home_of(
                                     bob.user_id))
            await publish(carol)
            await link_second_device(tmp_path, stack, bob)
            for stranger in (alice, carol):  # through bob's home's peer, and at it
                async with open_client(stranger) as client:
                    answer = await client.connection.request(GetDevices, user_id=bob.user_id,
                                                             keys=True)
                listed = stranger.remember_device_list(answer.device_list, bob.user_id)
                assert listed.device_ids == {0, 1}
                assert answer.keyed is None
            async with open_client(bob) as client:
                _, keyed = await devices.keyed_devices(client)
            assert keyed == {0, 1}
