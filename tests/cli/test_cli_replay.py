"""A hostile node replays an old envelope to a device. Clients dedupe by message id,
but keep only the last :data:`cli.session.state.SEEN_LIMIT` ids; an Olm message cannot
be decrypted twice (its key is gone), a Megolm (group) message can, as long as the
device holds the sender's inbound session (up to ``MAX_INBOUND`` sessions of 100
messages each). Real relay nodes on loopback; the attacker controls the node's storage."""

from __future__ import annotations

import os
from contextlib import ExitStack

import trio
from cli_cluster import alice_and_bob, drain, run_cluster

from cli.client import Message, open_client
from cli.events import Dropped
from cli.features.group_messaging import create_group, send_group_text
from cli.session.state import SEEN_LIMIT
from relay.protocol.stored import decode_envelope

DEADLINE = 60


async def _events(state) -> list:
    async with open_client(state) as client:
        return await drain(client)


async def _replayed_after_the_window(cluster, bob, kind: str) -> list:
    """Show bob's queued ``kind`` envelope ("pay carol 100"), fill his dedupe window
    with SEEN_LIMIT other ids, have the node queue the old envelope again; return the
    events of bob's next receive."""
    storage = cluster.storages[cluster.home_of(bob.user_id)]
    (old,) = [q.envelope for q in await storage.read_queue(bob.user_id, 0)
              if decode_envelope(q.envelope).kind == kind]
    shown = [e.text for e in await _events(bob) if isinstance(e, Message)]
    assert shown == ["pay carol 100"]
    for _ in range(SEEN_LIMIT):
        bob.mark_seen(os.urandom(16))
    bob.save()
    await storage.enqueue([(bob.user_id, 0, old)])
    return await _events(bob)


async def test_a_group_message_replayed_after_the_dedupe_window_is_not_shown_again(
        tmp_path) -> None:
    with trio.fail_after(DEADLINE), ExitStack() as stack:
        async with run_cluster(1) as cluster:
            alice, bob = await alice_and_bob(tmp_path, cluster, stack)
            async with open_client(alice) as client:
                await create_group(client, "g", [bob.user_id])
            await _events(bob)
            async with open_client(alice) as client:
                await send_group_text(client, "g", "pay carol 100")
            # bob's device goes on to receive SEEN_LIMIT other messages (their ids
            # fill its dedupe window), then the node queues the old envelope again
            again = await _replayed_after_the_window(cluster, bob, "group")
            assert not [e for e in again if isinstance(e, Message)], again
            assert [e.reason for e in again if isinstance(e, Dropped)] == [
                "replayed group message (index 0 of its session was decrypted before)"]


async def test_a_pairwise_message_replayed_after_the_dedupe_window_is_not_shown_again(
        tmp_path) -> None:
    """An old Olm envelope no longer decrypts (its message key is spent), but the
    failure used to ask the sender for a resend, which its client sent, and which was
    shown as new. Now a message id already in the history is neither asked for again
    nor shown again."""
    with trio.fail_after(DEADLINE), ExitStack() as stack:
        async with run_cluster(1) as cluster:
            alice, bob = await alice_and_bob(tmp_path, cluster, stack)
            async with open_client(alice) as client:
                await client.send_text(bob.user_id, "pay carol 100")
            replayed = await _replayed_after_the_window(cluster, bob, "olm")
            storage = cluster.storages[cluster.home_of(bob.user_id)]
            assert [type(e) for e in replayed] == [Dropped], replayed
            assert await _events(alice) == []  # alice's client answers retry requests here
            assert not [e for e in await _events(bob) if isinstance(e, Message)]
            assert await storage.read_queue(bob.user_id, 0) == []  # no resend on its way


def test_decrypted_indices_survive_a_save_and_bound_their_memory() -> None:
    """The indices are saved with the group store (a replay after a restart is still
    one), a store saved before replay checks loads, and a session's window stays
    within ``MAX_INDICES`` (older indices fold into the floor)."""
    import time

    import pytest
    import vodozemac

    from cli.session import groups
    from cli.session.replay import MAX_INDICES, IndexWindow

    pickle_key, gid = os.urandom(32), os.urandom(groups.GROUP_ID_SIZE)
    out = groups.OutboundSession(vodozemac.GroupSession(), time.time())
    store = groups.GroupStore()
    assert store.add_inbound(gid, "u", 1, out.session_id, out.session.session_key.to_base64())
    bodies = [groups.encrypt(out, gid, b"p%d" % i) for i in range(3)]
    assert store.decrypt("u", 1, bodies[1]) == (gid, b"p1")
    saved = store.to_map(pickle_key)
    restored = groups.GroupStore.from_map(saved, pickle_key)
    with pytest.raises(groups.GroupDecryptError, match="replayed"):
        restored.decrypt("u", 1, bodies[1])
    assert restored.decrypt("u", 1, bodies[0]) == (gid, b"p0")  # out of order is fine
    legacy = {k: v for k, v in saved.items() if k != "decrypted"}
    assert groups.GroupStore.from_map(legacy, pickle_key).decrypt("u", 1, bodies[1]) == (gid, b"p1")

    window = IndexWindow()
    assert all(window.add(i) for i in range(MAX_INDICES + 10))
    assert (window.floor, len(window.indices)) == (10, MAX_INDICES)
    assert not window.add(3) and not window.add(MAX_INDICES) and window.add(MAX_INDICES + 10)
    assert IndexWindow.from_list(window.to_list()).to_list() == window.to_list()
