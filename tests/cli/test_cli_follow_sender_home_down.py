"""``wa-cli recv --follow`` when a received message cannot be opened for now: the
first message from a new contact needs the sender's identity and device list from
the sender's home node, and that node is down. ``recv --follow`` used to exit 1
("relay refused the request (unavailable ...)"); a follow session must outlive a
peer's outage like its own: it says once that a message waits, retries with
backoff, and shows the message (a message request: the sender is no contact yet)
once the sender's home is back. Nothing of it was acknowledged meanwhile. Real ``wa-cli`` processes, two in-process nodes."""

from __future__ import annotations

import signal

import trio
from cli_procs import Running, bob_and_a_stranger_elsewhere, wa

from relay.testing import open_local_cluster

DEADLINE = 90


async def test_follow_waits_for_the_senders_home_and_then_shows_the_message(tmp_path):
    follow = None
    try:
        with trio.fail_after(DEADLINE):
            async with open_local_cluster(2) as cluster:
                users, sender, sender_home = await bob_and_a_stranger_elsewhere(
                    tmp_path, cluster)
                await wa(tmp_path / sender, "send", users["bob"]["user_id"], "hello")
                cluster.stop(sender_home)

                follow = await Running.start(tmp_path / "bob", "--json", "recv", "--follow")
                note = await follow.err_line()
                assert "cannot be opened yet" in note and "unavailable" in note, note
                assert follow.proc.returncode is None  # still following

                await cluster.start(sender_home)
                shown = await follow.json()  # not a contact yet: a message request
                assert (shown["type"], shown["from"], shown["declared_name"]) == (
                    "request", users[sender]["user_id"], sender), shown
                code, err = await follow.stop(signal.SIGINT)
                assert code == 0, err
    finally:
        if follow is not None:
            await follow.aclose()
