"""Groups: signed group state rules, sender keys (Megolm) and fan-out on real relay nodes
(in-process, loopback, memory storage) with 2-device accounts linked through the client API."""

from __future__ import annotations

import os
from contextlib import ExitStack

import nacl.signing
import pytest
import trio
from cli_cluster import drain, make_account, quiet, run_cluster

from cli.client import Message, open_client
from cli.events import Dropped
from cli.features.group_messaging import (
    GROUP_KEY,
    GROUP_STATE,
    NotGroupAdmin,
    _control,
    add_member,
    create_group,
    remove_member,
    send_group_text,
    send_pairwise,
)
from cli.features.group_receiving import GroupChanged
from cli.features.linking import link_device
from cli.features.payload import TextPayload
from cli.session import groups
from cli.session.crypto import account_user_id
from cli.session.group_state import GroupError, GroupStateRejected, SignedGroupState
from cli.session.state import create_state, open_state
from relay.protocol.frames import GroupRecipient, GroupSend

DEADLINE = 60


def key_and_id() -> tuple[nacl.signing.SigningKey, str]:
    key = nacl.signing.SigningKey.generate()
    return key, account_user_id(key)


# ------------------------------------------------------------------ state rules (no network)


def test_group_state_update_rules() -> None:
    (ak, alice), (bk, bob), (_, carol) = key_and_id(), key_and_id(), key_and_id()
    gid = groups.new_group_id()
    store = groups.GroupStore()
    v1, s1 = groups.make_state(ak, group_id=gid, name="team", members=[alice, bob],
                               admins=[alice], version=1, creator=alice)
    assert store.apply([s1], sender=alice, me=bob) == (None, v1)
    assert store.apply([s1], sender=alice, me=bob) is None  # the same version: nothing to do
    assert v1.members == tuple(sorted([alice, bob])) and v1.signer == alice

    # bob is a member but not an admin: his change is rejected, state unchanged
    _, forged = groups.make_state(bk, group_id=gid, name="team", members=[alice, bob, carol],
                                  admins=[alice, bob], version=2, creator=alice,
                                  prev=s1.digest())
    with pytest.raises(GroupStateRejected, match="not an admin"):
        store.apply([forged], sender=bob, me=bob)
    assert store.groups[gid].state == v1

    v2, s2 = groups.make_state(ak, group_id=gid, name="team", members=[alice, bob, carol],
                               admins=[alice], version=2, creator=alice, prev=s1.digest())
    assert store.apply([s2], sender=alice, me=bob) == (v1, v2)
    assert store.apply([s1], sender=alice, me=bob) is None  # a replayed older state: held
    _, other = groups.make_state(ak, group_id=gid, name="renamed", members=[alice, bob],
                                 admins=[alice], version=2, creator=alice, prev=s1.digest())
    with pytest.raises(groups.GroupForked, match="forked at version 2"):
        store.apply([other], sender=alice, me=bob)
    assert store.groups[gid].state == v2 and store.groups[gid].forked == 2
    tampered = SignedGroupState(s2.body.replace(b"team", b"meet"), s2.signature)
    with pytest.raises(GroupStateRejected, match="signature"):
        store.apply([tampered], sender=alice, me=bob)
    _, skip = groups.make_state(ak, group_id=gid, name="team", members=[alice, bob],
                                admins=[alice], version=4, creator=alice, prev=s2.digest())
    with pytest.raises(GroupStateRejected, match="gap"):
        store.apply([skip], sender=alice, me=bob)
    _, huge = groups.make_state(ak, group_id=gid, name="team", members=[alice, bob],
                                admins=[alice], version=2**40, creator=alice, prev=s2.digest())
    with pytest.raises(GroupStateRejected, match="gap"):
        store.apply([huge], sender=alice, me=bob)

    # an unknown group is accepted only with its whole chain from version 1 ...
    _, later = groups.make_state(ak, group_id=gid, name="x",
                                 members=[alice, bob], admins=[alice], version=3, creator=alice,
                                 prev=bytes(32))
    with pytest.raises(GroupStateRejected, match="start at version 1"):
        groups.GroupStore().apply([later], sender=alice, me=bob)
    # ... from the member who added this account (carol was added by alice, not bob)
    with pytest.raises(GroupStateRejected, match="member who added it"):
        groups.GroupStore().apply([s1, s2], sender=bob, me=carol)
    assert groups.GroupStore().apply([s1, s2], sender=alice, me=carol) == (None, v2)
    # a broken link inside the chain
    with pytest.raises(GroupStateRejected, match="previous one"):
        groups.GroupStore().apply([s1, s2, later], sender=alice, me=carol)
    # version 1 must come from its creator
    _, fake = groups.make_state(bk, group_id=groups.new_group_id(), name="fake",
                                members=[alice, bob], admins=[bob], version=1, creator=alice)
    with pytest.raises(GroupStateRejected, match="creator"):
        groups.GroupStore().apply([fake], sender=bob, me=alice)
    with pytest.raises(GroupStateRejected, match="admin must be a member"):
        groups.make_state(ak, group_id=gid, name="t", members=[bob], admins=[alice], version=1,
                          creator=alice)


def test_late_key_starts_at_the_current_index_and_rotation() -> None:
    (_, alice), (_, bob) = key_and_id(), key_and_id()
    gid = groups.new_group_id()
    sender = groups.GroupStore()
    dev = (bob, 0, os.urandom(32))
    out, rotated = sender.outbound_for(gid, {dev}, now=1000.0)
    assert rotated
    early = groups.GroupStore()
    early.add_inbound(gid, alice, 0, out.session_id, out.session_key())
    first = groups.encrypt(out, gid, b"before")
    late = groups.GroupStore()  # gets the key only now, at index 1
    late.add_inbound(gid, alice, 0, out.session_id, out.session_key())
    second = groups.encrypt(out, gid, b"after")
    assert early.decrypt(alice, 0, first) == (gid, b"before")
    assert early.decrypt(alice, 0, second) == (gid, b"after")
    assert late.decrypt(alice, 0, second) == (gid, b"after")
    with pytest.raises(groups.GroupDecryptError, match="unknown message index"):
        late.decrypt(alice, 0, first)
    with pytest.raises(groups.GroupDecryptError, match="no group session key"):
        early.decrypt(alice, 1, second)  # another sender device: no key from it
    # a later copy of the key does not replace an earlier one
    assert not early.add_inbound(gid, alice, 0, out.session_id, out.session_key())
    with pytest.raises(groups.GroupDecryptError, match="another group"):
        early.add_inbound(groups.new_group_id(), alice, 0, out.session_id, out.session_key())

    out.shared.add(dev)
    assert sender.outbound_for(gid, {dev}, now=1000.0) == (out, False)
    # a device holding the key left: new session
    moved, rotated = sender.outbound_for(gid, set(), now=1000.0)
    assert rotated and moved.session_id != out.session_id
    # after ROTATE_MESSAGES messages, or ROTATE_SECONDS
    for _ in range(groups.ROTATE_MESSAGES):
        groups.encrypt(moved, gid, b"x")
    aged, rotated = sender.outbound_for(gid, set(), now=1000.0)
    assert rotated and aged.session_id != moved.session_id
    assert sender.outbound_for(gid, set(), now=1000.0 + 3600)[1] is False
    assert sender.outbound_for(gid, set(), now=1000.0 + groups.ROTATE_SECONDS)[1] is True


def test_group_store_survives_save_and_open(tmp_path) -> None:
    with create_state(tmp_path / "a", name="a", relay_url="ws://x") as state:
        gid = groups.new_group_id()
        _, signed = groups.make_state(state.account_key, group_id=gid, name="g",
                                      members=[state.user_id], admins=[state.user_id],
                                      version=1, creator=state.user_id)
        state.groups.apply([signed], sender=None, me=state.user_id)
        out, _ = state.groups.outbound_for(gid, set())
        state.groups.add_inbound(gid, state.user_id, 1, out.session_id, out.session_key())
        body = groups.encrypt(out, gid, b"kept")
        state.save()
    with open_state(tmp_path / "a") as again:
        assert again.groups.find("g").state.group_id == gid
        assert again.groups.find(gid.hex()[:8]).state.name == "g"
        assert again.groups.decrypt(again.user_id, 1, body) == (gid, b"kept")
        assert again.groups.outbound[gid].session.message_index == 1
        with pytest.raises(GroupError, match="unknown group"):
            again.groups.find("nope")


# ------------------------------------------------------------------ on real nodes


async def two_devices(tmp_path, name, cluster, stack, not_on=()) -> list:
    """An account with a primary and a linked laptop (both states kept open)."""
    primary = make_account(tmp_path, name, cluster, stack, not_on=not_on)
    async with open_client(primary) as client:
        await link_device(client, tmp_path / f"{name}-laptop", "laptop", history=False)
    return [primary, quiet(stack.enter_context(open_state(tmp_path / f"{name}-laptop")))]


async def events_of(state) -> list:
    async with open_client(state) as client:
        return await drain(client)


def group_texts(events, name) -> list[tuple[bytes, str, str]]:
    return [(e.msg_id, e.text, e.direction) for e in events
            if isinstance(e, Message) and e.group == name]


def capture_group_bodies(client, into: list) -> None:
    """Record the body of every group_send the client makes."""
    conn = client.connection
    original = conn.request

    async def request(frame_cls, **fields):
        if frame_cls.TYPE == "group_send":
            into.append(fields["body"])
        return await original(frame_cls, **fields)

    conn.request = request


async def test_five_users_two_devices_each_get_every_message_once(tmp_path) -> None:
    with trio.fail_after(DEADLINE * 2), ExitStack() as stack:
        async with run_cluster(3) as cluster:
            users = {n: await two_devices(tmp_path, n, cluster, stack)
                     for n in ("alice", "bob", "carol", "dave", "erin")}
            ids = {n: devs[0].user_id for n, devs in users.items()}
            alice, alice_laptop = users["alice"]
            async with open_client(alice) as client:
                made = await create_group(client, "team", [ids[n] for n in ids if n != "alice"])
            assert made.members == tuple(sorted(ids.values())) and made.admins == (ids["alice"],)
            for devs in users.values():  # everyone learns the group
                for dev in devs:
                    changes = [e for e in await events_of(dev) if isinstance(e, GroupChanged)]
                    if dev is alice:
                        assert changes == []
                    else:
                        assert [(c.name, c.version, c.actor) for c in changes] == [
                            ("team", 1, ids["alice"])]
                    assert dev.groups.find("team").state == made

            senders = [alice, users["bob"][1], users["carol"][0], alice_laptop, users["erin"][1]]
            sent = []
            for i, dev in enumerate(senders):
                for j in range(2):
                    async with open_client(dev) as client:
                        result = await send_group_text(client, "team", f"m{i}.{j}")
                    assert result.status == "stored" and result.name == "team"
                    sent.append((result.msg_id, f"m{i}.{j}", dev))
            checked = 0
            for devs in users.values():
                for dev in devs:
                    got = group_texts(await events_of(dev), "team")
                    expected = [(mid, text, "out" if src.user_id == dev.user_id else "in")
                                for mid, text, src in sent if src is not dev]
                    assert got == expected, dev.home
                    assert len(got) == (8 if dev in senders else 10)
                    checked += 1
                    assert group_texts(await events_of(dev), "team") == []  # exactly once
            assert checked == 10
            # one outbound session per sending device, shared once per member device
            assert alice.groups.outbound[made.group_id].session.message_index == 2
            # a companion has no account key: it cannot change the group
            async with open_client(users["bob"][1]) as client:
                with pytest.raises(NotGroupAdmin, match="only the primary"):
                    await add_member(client, "team", ids["alice"])
            async with open_client(users["bob"][0]) as client:
                with pytest.raises(NotGroupAdmin, match="not an admin"):
                    await remove_member(client, "team", ids["carol"])


async def test_remove_then_add_member(tmp_path) -> None:
    with trio.fail_after(DEADLINE), ExitStack() as stack:
        async with run_cluster(3) as cluster:
            alice = make_account(tmp_path, "alice", cluster, stack)
            bob = await two_devices(tmp_path, "bob", cluster, stack)
            dave = await two_devices(tmp_path, "dave", cluster, stack)
            erin = make_account(tmp_path, "erin", cluster, stack)
            async with open_client(erin):
                pass
            bodies: list[bytes] = []
            async with open_client(alice) as client:
                capture_group_bodies(client, bodies)
                made = await create_group(client, "g", [bob[0].user_id, dave[0].user_id])
                await send_group_text(client, "g", "before removal")
                old_session = alice.groups.outbound[made.group_id].session_id
                after = await remove_member(client, "g", dave[0].user_id)
                assert dave[0].user_id not in after.members and after.version == 2
                await send_group_text(client, "g", "after removal")
                assert alice.groups.outbound[made.group_id].session_id != old_session
            for dev in dave:
                events = await events_of(dev)
                assert [e.text for e in events if isinstance(e, Message)] == ["before removal"]
                (left,) = [e for e in events if isinstance(e, GroupChanged) and e.version == 2]
                assert left.left and left.removed == (dave[0].user_id,)
                # even handed the ciphertext, a removed member cannot decrypt it
                with pytest.raises(groups.GroupDecryptError):
                    dev.groups.decrypt(alice.user_id, 0, bodies[-1])
            for dev in bob:
                texts = [e.text for e in await events_of(dev) if isinstance(e, Message)]
                assert texts == ["before removal", "after removal"]

            # bob (a member) sends after learning of the removal: dave gets no key from him
            async with open_client(bob[1]) as client:
                capture_group_bodies(client, bodies)
                await send_group_text(client, "g", "bob after removal")
            for dev in dave:
                assert [e for e in await events_of(dev) if isinstance(e, Message)] == []
                with pytest.raises(groups.GroupDecryptError):
                    dev.groups.decrypt(bob[1].user_id, bob[1].device_id, bodies[-1])

            async with open_client(alice) as client:
                added = await add_member(client, "g", erin.user_id)
                assert erin.user_id in added.members and added.version == 3
                await send_group_text(client, "g", "welcome erin")
            events = await events_of(erin)
            assert [e.text for e in events if isinstance(e, Message)] == ["welcome erin"]
            assert erin.groups.find("g").state == added
            for body in bodies[:-1]:  # nothing sent before erin joined decrypts for her
                with pytest.raises(groups.GroupDecryptError):
                    erin.groups.decrypt(alice.user_id, 0, body)


async def test_change_by_non_admin_is_rejected_by_members(tmp_path) -> None:
    with trio.fail_after(DEADLINE), ExitStack() as stack:
        async with run_cluster(2) as cluster:
            alice = make_account(tmp_path, "alice", cluster, stack)
            bob = make_account(tmp_path, "bob", cluster, stack)
            carol = make_account(tmp_path, "carol", cluster, stack)
            mallory = make_account(tmp_path, "mallory", cluster, stack)
            for s in (bob, carol, mallory):
                async with open_client(s):
                    pass
            async with open_client(alice) as client:
                made = await create_group(client, "g", [bob.user_id, carol.user_id])
            await events_of(bob)
            # bob signs a v2 adding mallory with his own account key and sends it to all
            _, forged = groups.make_state(
                bob.account_key, group_id=made.group_id, name="g",
                members=[*made.members, mallory.user_id], admins=[*made.admins, bob.user_id],
                version=2, creator=made.creator, prev=bob.groups.find("g").signed.digest())
            async with open_client(bob) as client:
                await send_pairwise(client, [alice.user_id, carol.user_id],
                                    lambda mid: _control(GROUP_STATE, mid, state=forged.to_map()))
            for dev in (alice, carol):
                events = await events_of(dev)
                assert any(isinstance(e, Dropped) and "not an admin" in e.reason for e in events)
                assert not any(isinstance(e, GroupChanged) and e.version == 2 for e in events)
                assert dev.groups.find("g").state == made

            # mallory (not a member) holds the real signed state, shares a sender key and
            # fans a message out to the members: nothing is shown, the key is refused
            signed = alice.groups.find("g").signed
            mal_store = groups.GroupStore()
            mal_store.apply([signed], sender=None, me=mallory.user_id)
            out, _ = mal_store.outbound_for(made.group_id, set())
            async with open_client(mallory) as client:
                await send_pairwise(client, [carol.user_id], lambda mid: _control(
                    GROUP_KEY, mid, group_id=made.group_id, session_id=out.session_id,
                    session_key=out.session_key(), sender_device=0, state=signed.to_map()))
                await client.connection.request(
                    GroupSend, msg_id=os.urandom(16), recipients=[
                        GroupRecipient(carol.user_id, 1, [0])],
                    body=groups.encrypt(out, made.group_id, TextPayload(
                        os.urandom(16), "from mallory", 1, "m", made.hex_id).encode()))
            events = await events_of(carol)
            reasons = [e.reason for e in events if isinstance(e, Dropped)]
            assert any("not a member" in r for r in reasons)
            assert any("no group session key" in r for r in reasons)
            assert not any(isinstance(e, Message) for e in events)


async def test_stale_member_device_gets_the_key_and_the_message(tmp_path) -> None:
    with trio.fail_after(DEADLINE), ExitStack() as stack:
        async with run_cluster(3) as cluster:
            alice = make_account(tmp_path, "alice", cluster, stack)
            carol = make_account(tmp_path, "carol", cluster, stack,
                                 not_on=[cluster.home_of(alice.user_id)])
            async with open_client(carol):
                pass
            async with open_client(alice) as client:
                await create_group(client, "g", [carol.user_id])
                await send_group_text(client, "g", "one")
            # carol links a tablet; alice's cached list of carol is now stale
            async with open_client(carol) as client:
                await link_device(client, tmp_path / "carol-tablet", "tablet", history=False)
            tablet = quiet(stack.enter_context(open_state(tmp_path / "carol-tablet")))
            frames = []
            async with open_client(alice) as client:
                original = client.connection.request

                async def spy(frame_cls, **fields):
                    frames.append(frame_cls.TYPE)
                    try:
                        return await original(frame_cls, **fields)
                    except Exception as exc:
                        frames.append(getattr(exc, "code", type(exc).__name__))
                        raise

                client.connection.request = spy
                result = await send_group_text(client, "g", "two")
            assert result.status == "stored"
            # the catch-up before the send processed the notice of carol's new list, so
            # the first group_send already names the tablet (no stale_devices round)
            assert frames.count("group_send") == 1 and "stale_devices" not in frames
            texts = [e.text for e in await events_of(tablet) if isinstance(e, Message)]
            assert texts == ["two"]  # the current key only: "one" was before it joined
            assert tablet.groups.find("g").state.members == tuple(sorted(
                [alice.user_id, carol.user_id]))
            texts = [e.text for e in await events_of(carol) if isinstance(e, Message)]
            assert texts == ["one", "two"]


def test_pairwise_control_sends_are_split_to_fit_a_frame() -> None:
    from types import SimpleNamespace

    from cli.features.group_messaging import SEND_BUDGET, SEND_MAX_COPIES, _chunks

    lists = {f"u{i}": SimpleNamespace(devices=[object()] * (1 + i % 3)) for i in range(300)}
    users = list(lists)
    # a 14 KB group state per copy (256 members): several sends, each under the budget
    chunks = _chunks(users, lists, 14_000)
    assert [u for c in chunks for u in c] == users and len(chunks) > 1
    for c in chunks:
        copies = sum(len(lists[u].devices) for u in c)
        assert copies * (14_000 + 256) <= SEND_BUDGET and copies <= SEND_MAX_COPIES
    assert _chunks(users, lists, 100) == [users]  # 600 small copies: one send
    assert _chunks([], lists, 100) == []


async def test_sender_key_rotates_when_a_member_device_leaves(tmp_path) -> None:
    with trio.fail_after(DEADLINE), ExitStack() as stack:
        async with run_cluster(3) as cluster:
            alice = make_account(tmp_path, "alice", cluster, stack)
            bob, laptop = await two_devices(tmp_path, "bob", cluster, stack)
            bodies: list[bytes] = []
            async with open_client(alice) as client:
                capture_group_bodies(client, bodies)
                made = await create_group(client, "g", [bob.user_id])
                await send_group_text(client, "g", "both devices")
            first = alice.groups.outbound[made.group_id].session_id
            assert [e.text for e in await events_of(laptop) if isinstance(e, Message)] == [
                "both devices"]
            async with open_client(bob) as client:
                await client.remove_device(laptop.device_id)
            async with open_client(alice) as client:  # alice's cached list of bob is stale
                capture_group_bodies(client, bodies)
                result = await send_group_text(client, "g", "primary only")
            assert result.status == "stored"
            assert alice.groups.outbound[made.group_id].session_id != first
            texts = [e.text for e in await events_of(bob) if isinstance(e, Message)]
            assert texts == ["both devices", "primary only"]
            with pytest.raises(groups.GroupDecryptError, match="no group session key"):
                laptop.groups.decrypt(alice.user_id, 0, bodies[-1])  # the new key never reached it
