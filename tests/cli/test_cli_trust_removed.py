"""Issue 10, finding 7: a removed member gets nothing new from any member, also from a
member that was offline when the admin removed it (it catches up before sending), and
sender keys rotate on every member removal and every device removal. Real relay nodes
on loopback, clients through the client API."""

from __future__ import annotations

from contextlib import ExitStack

import trio
from cli_cluster import drain, link_second_device, make_account, publish, run_cluster

from cli.client import Message, open_client
from cli.features.group_messaging import create_group, remove_member, send_group_text
from cli.features.group_receiving import GroupChanged

DEADLINE = 60


async def events_of(state) -> list:
    async with open_client(state) as client:
        return await drain(client)


async def test_removed_member_gets_nothing_new_from_any_member(tmp_path) -> None:
    with trio.fail_after(DEADLINE), ExitStack() as stack:
        async with run_cluster(2) as cluster:
            alice, bob, erin = (make_account(tmp_path, n, cluster, stack)
                                for n in ("alice", "bob", "erin"))
            for s in (alice, bob, erin):
                await publish(s)
            bob1 = await link_second_device(tmp_path, stack, bob)
            async with open_client(alice) as client:
                made = await create_group(client, "g", [bob.user_id, erin.user_id])
            gid = made.group_id
            for s in (bob, bob1, erin):
                await events_of(s)
            async with open_client(bob) as client:  # erin gets bob's sender key
                await send_group_text(client, "g", "before")
            old_sid = bob.groups.outbound[gid].session_id
            got = await events_of(erin)
            assert [e.text for e in got if isinstance(e, Message)] == ["before"]
            assert any(k[0] == bob.user_id and k[2] == old_sid for k in erin.groups.inbound)

            # bob's device is offline while alice removes erin
            async with open_client(alice) as client:
                await remove_member(client, "g", erin.user_id)
                await send_group_text(client, "g", "from alice, after")
            # bob sends without having run recv: it catches up first
            async with open_client(bob) as client:
                after = await send_group_text(client, "g", "from bob, after")
                with trio.fail_after(5):  # the connection synced already: no new wait
                    await send_group_text(client, "g", "from bob, again")
            assert erin.user_id not in bob.groups.find("g").state.members
            new_sid = bob.groups.outbound[gid].session_id
            assert new_sid != old_sid  # rotated on the removal

            got = await events_of(erin)
            assert [e.left for e in got if isinstance(e, GroupChanged)] == [True]
            assert not [e for e in got if isinstance(e, Message)]
            assert after.msg_id not in {getattr(e, "msg_id", None) for e in got}
            # no new sender key reached erin from anyone
            assert not any(k[2] == new_sid for k in erin.groups.inbound)
            assert not any(k[0] == alice.user_id for k in erin.groups.inbound)

            # the members read everything, including what bob caught up on
            texts = [e.text for e in await events_of(bob) if isinstance(e, Message)]
            assert texts == ["from alice, after"]
            texts = sorted(e.text for e in await events_of(alice) if isinstance(e, Message))
            assert texts == ["before", "from bob, after", "from bob, again"]

            # a device removal rotates the sender key too: bob removes his second device
            async with open_client(alice) as client:
                await send_group_text(client, "g", "to both devices")
            before = alice.groups.outbound[gid].session_id
            assert any(u == bob.user_id and d == 1 for u, d, _ in alice.groups.outbound[gid].shared)
            async with open_client(bob) as client:
                await client.remove_device(1)
            await events_of(alice)  # the notice of bob's new list
            assert gid not in alice.groups.outbound  # rotated: made anew on the next send
            async with open_client(alice) as client:
                await send_group_text(client, "g", "after the device left")
            out = alice.groups.outbound[gid]
            assert out.session_id != before
            assert not any(u == bob.user_id and d == 1 for u, d, _ in out.shared)
            texts = [e.text for e in await events_of(bob) if isinstance(e, Message)]
            assert texts == ["to both devices", "after the device left"]
