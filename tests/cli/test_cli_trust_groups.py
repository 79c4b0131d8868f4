"""Issue 10, finding 3: group state is a hash chain from the creator-signed version 1.
An ex-member cannot hand a newcomer a forged group state (with or without a huge
version), and an ex-admin's fork is detected and shown, never adopted; the honest
admin's chain is accepted. Real relay nodes on loopback, clients through the client API."""

from __future__ import annotations

from contextlib import ExitStack

import pytest
import trio
from cli_cluster import drain, make_account, run_cluster

from cli.client import Message, open_client
from cli.events import Dropped, GroupForkSeen
from cli.features.group_messaging import (
    GROUP_STATE,
    GroupSendError,
    _control,
    _publish,
    add_member,
    create_group,
    remove_member,
    send_group_text,
    send_pairwise,
)
from cli.features.group_receiving import GroupChanged
from cli.session import groups

DEADLINE = 60


async def events_of(state) -> list:
    async with open_client(state) as client:
        return await drain(client)


async def send_chain(sender, to: str, chain) -> None:
    async with open_client(sender) as client:
        await send_pairwise(client, [to], lambda mid: _control(
            GROUP_STATE, mid, state=chain[-1].to_map(), chain=[s.to_map() for s in chain]))


async def test_forked_group_state_is_refused_by_a_newcomer(tmp_path) -> None:
    with trio.fail_after(DEADLINE), ExitStack() as stack:
        async with run_cluster(2) as cluster:
            alice, bob, erin, carol = (make_account(tmp_path, n, cluster, stack)
                                       for n in ("alice", "bob", "erin", "carol"))
            for s in (bob, erin, carol):
                async with open_client(s):
                    pass
            async with open_client(alice) as client:
                await create_group(client, "g", [bob.user_id, erin.user_id])
                record = alice.groups.find("g")  # erin becomes an admin (v2), then leaves (v3)
                v = record.state
                await _publish(client, record, list(v.members), [alice.user_id, erin.user_id],
                               v.name, v.group_id, v.creator)
                await remove_member(client, "g", erin.user_id)
            await events_of(erin)
            real = [s for _, s in erin.groups.find("g").chain]
            assert [parse.version for parse in map(groups.parse_state, real)] == [1, 2, 3]
            gid = groups.parse_state(real[0]).group_id

            # 1. erin, no longer a member, self-signs a state with a huge version and
            # herself as admin, and sends it to carol before carol is added: refused
            _, huge = groups.make_state(
                erin.account_key, group_id=gid, name="g", admins=[erin.user_id],
                members=[erin.user_id, carol.user_id], version=2**40, creator=alice.user_id,
                prev=real[-1].digest())
            await send_chain(erin, carol.user_id, [huge])
            # ... and a fork of version 3 adding carol, signed by erin while she was an
            # admin of version 2, relayed by bob, who did not add carol: refused (an
            # unknown group is taken only from the member who added this account)
            _, fork = groups.make_state(
                erin.account_key, group_id=gid, name="g",
                members=[alice.user_id, bob.user_id, erin.user_id, carol.user_id],
                admins=[alice.user_id, erin.user_id], version=3, creator=alice.user_id,
                prev=real[1].digest())
            await send_chain(bob, carol.user_id, [*real[:2], fork])  # relayed by bob
            events = await events_of(carol)
            reasons = [e.reason for e in events if isinstance(e, Dropped)]
            assert any("start at version 1" in r for r in reasons), reasons
            assert any("member who added it" in r for r in reasons), reasons
            assert not carol.groups.groups  # nothing adopted

            # 2. the honest path: alice adds carol; carol adopts the whole chain
            async with open_client(alice) as client:
                added = await add_member(client, "g", carol.user_id)
            events = await events_of(carol)
            assert any(isinstance(e, GroupChanged) and e.version == added.version
                       for e in events)
            held = carol.groups.find("g")
            assert held.state == added and [s.version for s, _ in held.chain] == [1, 2, 3, 4]
            assert held.forked is None

            # 3. erin's fork of version 3 (signed while she was an admin of version 2),
            # now sent by erin herself: detected and shown, not adopted, no more sends
            await send_chain(erin, carol.user_id, [*real[:2], fork])
            events = await events_of(carol)
            forks = [e for e in events if isinstance(e, GroupForkSeen)]
            assert forks and forks[0].version == 3 and forks[0].other_signer == erin.user_id
            assert forks[0].held_signer == alice.user_id
            held = carol.groups.find("g")
            assert held.state == added and held.forked == 3
            async with open_client(carol) as client:
                with pytest.raises(GroupSendError, match="two histories"):
                    await send_group_text(client, "g", "to whom?")

            # the honest members are unaffected: bob still sends, alice reads
            await events_of(bob)
            async with open_client(bob) as client:
                await send_group_text(client, "g", "still fine")
            events = await events_of(alice)
            assert [e.text for e in events if isinstance(e, Message)] == ["still fine"]
