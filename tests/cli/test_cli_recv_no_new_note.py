"""``wa-cli recv`` (human mode) says "no new messages" only when it showed nothing:
it used to say so right after the lines of message requests, which are not
``Message`` events (README walkthrough, session 6)."""

from __future__ import annotations

import trio
from cli_procs import lines, wa

from relay.testing import open_local_cluster


async def test_no_new_messages_only_when_nothing_was_shown(tmp_path):
    with trio.fail_after(60):
        async with open_local_cluster(1) as cluster:
            (bob,) = lines(await wa(tmp_path / "b", "--json", "init", "--trust-on-first-use",
                                    "--name", "bob", "--relay", cluster.urls["n1"]))
            await wa(tmp_path / "a", "init", "--trust-on-first-use", "--name", "alice",
                     "--relay", cluster.urls["n1"])
            await wa(tmp_path / "a", "send", bob["user_id"], "hi bob")  # not a contact
            first = await wa(tmp_path / "b", "recv", "--timeout", "0.5")
            out = first.stdout.decode() + first.stderr.decode()
            assert "alice" in out and "no new messages" not in out, out
            again = await wa(tmp_path / "b", "recv", "--timeout", "0.5")
            assert "no new messages" in again.stdout.decode() + again.stderr.decode()
