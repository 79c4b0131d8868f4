"""Multi-device accounts on real relay nodes (in-process, loopback, memory storage):
linking, own-device copies, stale device lists, device-list notices, removal, linking
code errors, history sync, companions working while the primary is offline."""

from __future__ import annotations

import os
from contextlib import ExitStack

import pytest
import trio
from cli_cluster import alice_and_bob, drain, make_account, quiet, run_cluster

from cli.client import DevicesChanged, Message, init_account, open_client
from cli.errors import DeviceRemoved, LinkFailed, NotPrimary, RelayError
from cli.features.devices import MISMATCH_MESSAGE, NOT_FOUND_MESSAGE
from cli.features.linkcode import LinkCode
from cli.features.linking import (
    complete_link,
    link_device,
    link_devices,
    open_link,
    save_linked,
)
from cli.session.state import AlreadyInitialized, create_state, new_home, open_state
from relay.protocol.frames import Error, LinkComplete

DEADLINE = 30


async def messages(state) -> list[Message]:
    """Connect, take the backlog (messages only), disconnect."""
    async with open_client(state) as client:
        return [e for e in await drain(client) if isinstance(e, Message)]


async def next_change(state) -> DevicesChanged:
    """Connect and wait (backlog, then live) for the next device-list notice; the
    notice may still be on its way through the federation. Bounded by the test's
    ``fail_after``."""
    async with open_client(state) as client:
        async for event in client.receive():
            if isinstance(event, DevicesChanged):
                return event
    raise AssertionError("receive ended without a device-list notice")


async def add_device(primary, home, name, **kw):
    async with open_client(primary) as client:
        linked = await link_device(client, home, name, **kw)
    return linked


async def approve_and_join(client, pending, home):
    """Approve ``pending`` with the primary's ``client`` while the new device waits,
    saves into ``home`` and reaches its home (the confirmation the approval waits for).
    Returns ``(ApprovedDevice, LinkedAccount)``."""
    result = {}
    with new_home(home) as fresh:
        async with trio.open_nursery() as nursery:
            async def join():
                result["linked"] = await complete_link(pending, fresh, client.url)
            nursery.start_soon(join)
            result["approved"] = await client.approve_link(pending.code)
    return result["approved"], result["linked"]


def spy(client, log: list) -> None:
    """Record every request type (and error code) the client sends."""
    conn = client.connection
    original = conn.request

    async def request(frame_cls, **fields):
        log.append((frame_cls.TYPE, fields))
        try:
            return await original(frame_cls, **fields)
        except RelayError as exc:
            log.append(("error", exc.code))
            raise

    conn.request = request


async def test_phone_and_laptop_get_everything_once_and_own_devices_see_outgoing(tmp_path):
    with trio.fail_after(DEADLINE), ExitStack() as stack:
        async with run_cluster(3) as cluster:
            alice, bob = await alice_and_bob(tmp_path, cluster, stack, apart=True)
            alice.contacts["bob"] = bob.user_id
            a2 = await add_device(alice, tmp_path / "alice-tablet", "tablet")
            b1 = await add_device(bob, tmp_path / "bob-laptop", "laptop")
            assert (a2.device_id, b1.device_id) == (1, 1)
            alice2 = quiet(stack.enter_context(open_state(tmp_path / "alice-tablet")))
            laptop = quiet(stack.enter_context(open_state(tmp_path / "bob-laptop")))
            assert alice2.contacts == {"bob": bob.user_id} and alice2.account_key is None
            assert laptop.user_id == bob.user_id and laptop.device_id == 1

            texts = ["one", "two ✓", "three"]
            async with open_client(alice) as client:  # the laptop is offline throughout
                sent = [await client.send_text(bob.user_id, t) for t in texts]
            assert [r.status for r in sent] == ["stored"] * 3
            for device in (bob, laptop):
                got = await messages(device)
                assert [m.text for m in got] == texts
                assert [m.msg_id for m in got] == [r.msg_id for r in sent]
                assert {(m.direction, m.sender_user, m.sender_device) for m in got} == {
                    ("in", alice.user_id, 0)}
                assert await messages(device) == []  # exactly once
            own = await messages(alice2)
            assert [(m.text, m.direction, m.peer, m.sender_device) for m in own] == [
                (t, "out", bob.user_id, 0) for t in texts]

            # The companion sends while the primary is offline; everyone else sees it.
            async with open_client(laptop) as client:
                reply = await client.send_text(alice.user_id, "from the laptop")
            assert reply.status == "stored"
            for device in (alice, alice2):
                (m,) = await messages(device)
                assert (m.text, m.direction, m.sender_user, m.sender_device) == (
                    "from the laptop", "in", bob.user_id, 1)
            (m,) = await messages(bob)
            assert (m.text, m.direction, m.peer, m.sender_device) == (
                "from the laptop", "out", alice.user_id, 1)
            assert bob.last_seen[(bob.user_id, 1)] > 0


async def test_stale_cached_list_reaches_the_new_tablet_through_stale_devices(tmp_path):
    """The tablet was linked after alice cached bob's list; it has no one-time keys left."""
    with trio.fail_after(DEADLINE), ExitStack() as stack:
        async with run_cluster(3) as cluster:
            alice, bob = await alice_and_bob(tmp_path, cluster, stack, apart=True)
            async with open_client(alice) as client:
                assert (await client.send_text(bob.user_id, "before")).status == "stored"
            assert alice.device_lists[bob.user_id].parsed.version == 1
            await add_device(bob, tmp_path / "bob-tablet", "tablet")
            tablet = quiet(stack.enter_context(open_state(tmp_path / "bob-tablet")))
            async with open_client(bob) as client:  # use up the tablet's one-time keys
                for _ in range(101):
                    (key,) = await client.claim_keys(bob.user_id, [1])
                    if key.fallback:
                        break
                assert key.fallback  # alice's session with the tablet uses the fallback key

            log: list = []
            async with open_client(alice) as client:  # alice's cache still says version 1
                spy(client, log)
                result = await client.send_text(bob.user_id, "after")
            assert result.status == "stored"
            assert [t for t, _ in log if t in ("send", "error")] == [
                "send", "error", "send"]
            assert ("error", "stale_devices") in log
            first, second = [f for t, f in log if t == "send"]
            assert first["msg_id"] == second["msg_id"]
            assert [c.device_id for c in second["recipients"][0].copies] == [0, 1]
            assert alice.device_lists[bob.user_id].parsed.version == 2
            assert [m.text for m in await messages(tablet)] == ["after"]
            assert [m.text for m in await messages(bob)] == ["before", "after"]


async def test_notices_removal_and_a_removed_device_gets_nothing(tmp_path):
    with trio.fail_after(DEADLINE), ExitStack() as stack:
        async with run_cluster(3) as cluster:
            alice, bob = await alice_and_bob(tmp_path, cluster, stack, apart=True)
            alice.contacts["bob"] = bob.user_id
            async with open_client(alice) as client:  # alice now holds bob's list (a watcher)
                await client.send_text(bob.user_id, "hi")
            await add_device(bob, tmp_path / "bob-laptop", "laptop")
            laptop = quiet(stack.enter_context(open_state(tmp_path / "bob-laptop")))
            change = await next_change(alice)
            assert change == DevicesChanged(bob.user_id, "bob", 2, ((1, "laptop"),), ())

            async with open_client(laptop) as client:
                with pytest.raises(NotPrimary):
                    await client.remove_device(0)
                with pytest.raises(NotPrimary):
                    await client.approve_link("wa1-aaaa")
            async with open_client(alice) as client:  # opens a session with the laptop
                await client.send_text(bob.user_id, "to both")
            assert alice.session_set(bob.user_id, 1) is not None
            assert [m.text for m in await messages(laptop)] == ["to both"]

            async with open_client(bob) as client:
                new_list = await client.remove_device(1)
                with pytest.raises(Exception, match="this \\(primary\\) device"):
                    await client.remove_device(0)
            assert new_list.version == 3 and new_list.device_ids == {0}
            change = await next_change(alice)
            assert (change.version, change.added, change.removed) == (3, (), ((1, "laptop"),))
            assert alice.session_set(bob.user_id, 1) is None

            with pytest.raises(DeviceRemoved, match="no longer in the account's device list"):
                async with open_client(laptop):
                    pass
            log: list = []
            async with open_client(alice) as client:
                spy(client, log)
                await client.send_text(bob.user_id, "after removal")
            (send,) = [f for t, f in log if t == "send"]
            assert [c.device_id for c in send["recipients"][0].copies] == [0]
            assert [m.text for m in await messages(bob)] == ["hi", "to both", "after removal"]


async def test_wrong_used_expired_mismatched_or_declined_codes_change_nothing(tmp_path):
    with trio.fail_after(DEADLINE), ExitStack() as stack:
        async with run_cluster(2) as cluster:
            bob = make_account(tmp_path, "bob", cluster, stack)
            async with open_client(bob):
                pass

            def snapshot():
                return (bob.own_list().version, bob.next_device_id, bob.published_version)

            before = snapshot()
            async with open_client(bob) as client:
                wrong = LinkCode(cluster.home_of(bob.user_id), os.urandom(16), os.urandom(32),
                                 os.urandom(16)).encode()
                with pytest.raises(LinkFailed, match=NOT_FOUND_MESSAGE):
                    await client.approve_link(wrong)
                async with open_link(client.url, "expired") as pending:
                    gone = pending.code
                with pytest.raises(LinkFailed, match=NOT_FOUND_MESSAGE):  # mailbox closed
                    await client.approve_link(gone)

                async with open_link(client.url, "laptop") as pending:
                    real = LinkCode.decode(pending.code)
                    forged = LinkCode(real.node_id, real.mailbox_id, os.urandom(32), real.secret)
                    with pytest.raises(LinkFailed, match=MISMATCH_MESSAGE):
                        await client.approve_link(forged.encode())
                    offers = []

                    async def decline(offer):
                        offers.append(offer)
                        return False

                    with pytest.raises(LinkFailed, match="not approved; nothing changed"):
                        await client.approve_link(pending.code, confirm=decline)
                    assert offers[0].name == "laptop"
                    assert offers[0].fingerprint == pending.fingerprint
                    assert snapshot() == before

                    approved, linked = await approve_and_join(client, pending,
                                                              tmp_path / "laptop")  # still valid
                    assert (approved.device_id, approved.version) == (1, 2)
                    assert linked.device_id == 1
                    with pytest.raises(LinkFailed, match=NOT_FOUND_MESSAGE):  # single use
                        await client.approve_link(pending.code)
            assert bob.own_list().version == 2 and bob.next_device_id == 2


async def test_failed_completion_withdraws_the_device_and_never_reuses_its_id(tmp_path):
    with trio.fail_after(DEADLINE), ExitStack() as stack:
        async with run_cluster(1) as cluster:
            bob = make_account(tmp_path, "bob", cluster, stack)
            async with open_client(bob) as client:
                original = client.connection.request

                async def failing(frame_cls, **fields):
                    if frame_cls is LinkComplete:
                        raise RelayError(Error(id=0, code="not_found", message="simulated"))
                    return await original(frame_cls, **fields)

                client.connection.request = failing
                async with open_link(client.url, "doomed") as pending:
                    with pytest.raises(LinkFailed, match=r"device 1 \(doomed\).*withdrawn"):
                        await client.approve_link(pending.code)
                client.connection.request = original
                assert bob.own_list().version == 3 and bob.own_list().device_ids == {0}
                served = await client.get_devices(bob.user_id)
                assert served.version == 3 and served.device_ids == {0}
                linked = await link_device(client, tmp_path / "next", "next")
            assert linked.device_id == 2  # id 1 is never handed out again


async def test_history_sync_and_no_history(tmp_path):
    with trio.fail_after(DEADLINE), ExitStack() as stack:
        async with run_cluster(2) as cluster:
            alice, bob = await alice_and_bob(tmp_path, cluster, stack)
            bob.contacts["alice"] = alice.user_id
            async with open_client(alice) as client:
                for i in range(3):
                    await client.send_text(bob.user_id, f"old {i}")
            await messages(bob)
            async with open_client(bob) as client:
                await client.send_text(alice.user_id, "my reply")
            await add_device(bob, tmp_path / "with", "with")
            await add_device(bob, tmp_path / "without", "without", history=False)
            with open_state(tmp_path / "with") as state:
                rows = [(e["direction"], e["text"], e["peer"]) for e in state.history]
                assert state.contacts == {"alice": alice.user_id}
                assert state.name == "bob"
            assert rows == [("in", "old 0", alice.user_id), ("in", "old 1", alice.user_id),
                            ("in", "old 2", alice.user_id), ("out", "my reply", alice.user_id)]
            with open_state(tmp_path / "without") as state:
                assert list(state.history) == [] and state.contacts == {"alice": alice.user_id}


async def test_a_used_home_cannot_be_linked_and_a_link_is_saved_once(tmp_path):
    with create_state(tmp_path / "used", name="x", relay_url="ws://127.0.0.1:9") as state:
        init_account(state)
    with pytest.raises(AlreadyInitialized), new_home(tmp_path / "used"):
        pass
    with trio.fail_after(DEADLINE), ExitStack() as stack:
        async with run_cluster(1) as cluster:
            bob = make_account(tmp_path, "bob", cluster, stack)
            with new_home(tmp_path / "fresh") as fresh:
                async with open_client(bob) as client, open_link(client.url, "x") as pending:
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(client.approve_link, pending.code)
                        linked = await complete_link(pending, fresh, bob.relay_url)
                with pytest.raises(AlreadyInitialized, match="already created"):
                    save_linked(fresh, linked, bob.relay_url)


async def test_link_devices_adds_n_devices_in_one_program(tmp_path):
    with trio.fail_after(DEADLINE), ExitStack() as stack:
        async with run_cluster(1) as cluster:
            alice = make_account(tmp_path, "alice", cluster, stack)
            bob = make_account(tmp_path, "bob", cluster, stack)
            async with open_client(alice), open_client(bob) as client:
                linked = await link_devices(client, tmp_path / "bob-devices", 3)
            assert [x.device_id for x in linked] == [1, 2, 3]
            assert bob.own_list().device_ids == {0, 1, 2, 3}
            async with open_client(alice) as client:
                await client.send_text(bob.user_id, "to four devices")
            for i in (1, 2, 3):
                state = quiet(stack.enter_context(open_state(tmp_path / "bob-devices" / f"device-{i}")))
                assert state.device_id == i
                assert [m.text for m in await messages(state)] == ["to four devices"]


async def test_an_expired_mailbox_tells_the_waiting_device_and_refuses_approval(tmp_path):
    with trio.fail_after(DEADLINE), ExitStack() as stack:
        async with run_cluster(1, link_ttl=0.3) as cluster:
            bob = make_account(tmp_path, "bob", cluster, stack)
            async with open_client(bob) as client:
                async with open_link(client.url, "late") as pending:
                    with pytest.raises(LinkFailed, match="expired before it was approved"):
                        await pending.wait()
                    with pytest.raises(LinkFailed, match=NOT_FOUND_MESSAGE):
                        await client.approve_link(pending.code)
            assert bob.own_list().version == 1 and bob.next_device_id == 1


async def test_a_device_that_never_reaches_its_home_is_withdrawn(tmp_path):
    """Finding 17 (docs/reliability.md): ``link_complete`` was answered, but the new device
    never got the material (here: it never reads its mailbox, as when the node holding it
    dies at that moment). The primary waits for the device's keys at the home, then
    withdraws it: no ghost stays in the list for contacts to fail on."""
    with trio.fail_after(DEADLINE), ExitStack() as stack:
        async with run_cluster(2) as cluster:
            bob = make_account(tmp_path, "bob", cluster, stack)
            async with open_client(bob) as client, open_link(client.url, "ghost") as pending:
                with pytest.raises(LinkFailed, match=r"device 1 \(ghost\).*did not reach its "
                                   r"home within 1 s.*withdrawn from the account again"):
                    await client.approve_link(pending.code, confirm_wait=1.0)
                served = await client.get_devices(bob.user_id)
            assert served.device_ids == {0} and served.version == 3
            assert not bob.pending_withdrawals


async def test_a_late_confirmation_keeps_the_device_an_absent_one_is_withdrawn(tmp_path):
    """The primary's approval stops while it waits for the confirmation (a Ctrl-C, a
    kill): the record stays. Its next connection keeps a device that reached its home
    meanwhile and withdraws one that did not."""
    with trio.fail_after(DEADLINE), ExitStack() as stack:
        async with run_cluster(1) as cluster:
            bob = make_account(tmp_path, "bob", cluster, stack)
            for name, joins in (("late", True), ("absent", False)):
                with new_home(tmp_path / name) as fresh:
                    async with open_client(bob) as client, open_link(client.url, name) as pending:
                        async with trio.open_nursery() as nursery:
                            nursery.start_soon(client.approve_link, pending.code)
                            linked = await pending.wait()
                            nursery.cancel_scope.cancel()  # the primary stops waiting
                    device_id = linked.device_id
                    assert bob.pending_withdrawals == {device_id}
                    if joins:
                        state = save_linked(fresh, linked, bob.relay_url)
                        async with open_client(state):
                            pass  # uploads its keys
                async with open_client(bob) as client:  # finishes the record
                    served = await client.get_devices(bob.user_id)
                assert not bob.pending_withdrawals
                assert (device_id in served.device_ids) is joins, (name, served.device_ids)


async def test_a_withdrawn_new_device_is_refused_and_its_home_can_be_discarded(tmp_path):
    """The approval gave up on the new device (it was too slow): the device got the
    material, but its first connection is refused (``DeviceRemoved``), and discarding
    what it saved leaves a home that links again (``wa-cli link`` does this)."""
    with trio.fail_after(DEADLINE), ExitStack() as stack:
        async with run_cluster(1) as cluster:
            bob = make_account(tmp_path, "bob", cluster, stack)
            home = tmp_path / "slow"
            with new_home(home) as fresh:
                async with open_client(bob) as client, open_link(client.url, "slow") as pending:
                    async with trio.open_nursery() as nursery:
                        got = {}

                        async def device():
                            got["linked"] = await pending.wait()  # then too slow to connect

                        nursery.start_soon(device)
                        with pytest.raises(LinkFailed, match="withdrawn"):
                            await client.approve_link(pending.code, confirm_wait=0.5)
                state = save_linked(fresh, got["linked"], bob.relay_url)
                with pytest.raises(DeviceRemoved):
                    async with open_client(state):
                        pass
                fresh.discard()
            assert sorted(p.name for p in home.iterdir()) == ["lock", "readers.lock"]
            with new_home(home):  # empty again: a new link may use it
                pass
