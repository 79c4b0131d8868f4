"""``wa-cli daemon`` when a received message cannot be opened yet (the first message
of a new contact whose home node is down): the daemon used to reset its reconnection
backoff on every successful connect, before the message failed to open again, so it
reconnected about every 0.4 s for as long as the outage lasted (84 connections in
30 s, seen by the README walkthrough). The backoff now restarts only once a
connection got through its backlog: over a few seconds the daemon connects a handful
of times, says so once, and hands the message to a subscriber once the sender's home
is back. Real ``wa-cli`` processes, two in-process nodes."""

from __future__ import annotations

import logging

import trio
from cli_procs import Running, bob_and_a_stranger_elsewhere, wa

from relay.testing import open_local_cluster

DEADLINE = 90
WINDOW = 5.0  # seconds over which the daemon's connections are counted
MOST = 6  # backoff 0.5 s doubling: connects at about 0, 0.5, 1.5, 3.5 s


async def test_daemon_backs_off_while_a_message_cannot_be_opened(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    daemon = follow = None
    try:
        with trio.fail_after(DEADLINE):
            async with open_local_cluster(2) as cluster:
                users, sender, sender_home = await bob_and_a_stranger_elsewhere(
                    tmp_path, cluster)
                await wa(tmp_path / sender, "send", users["bob"]["user_id"], "hello")
                cluster.stop(sender_home)
                bob_device = f"device {users['bob']['user_id'][:8]}/"

                def bob_connections() -> int:
                    return sum(bob_device in r.getMessage() and "ended after" in r.getMessage()
                               for r in caplog.records)

                daemon = await Running.start(tmp_path / "bob", "--json", "daemon")
                await daemon.json()  # listening
                note = await daemon.err_line()
                assert "cannot be opened yet" in note, note
                start = bob_connections()
                await trio.sleep(WINDOW)  # a rate over a fixed window, not an event
                made = bob_connections() - start
                assert made <= MOST, f"{made} connections in {WINDOW} s"

                await cluster.start(sender_home)
                follow = await Running.start(tmp_path / "bob", "--json", "recv", "--follow")
                shown = await follow.json()  # handed over by the daemon
                assert (shown["type"], shown["from"]) == ("request", users[sender]["user_id"])
    finally:
        for proc in (follow, daemon):
            if proc is not None:
                await proc.aclose()
