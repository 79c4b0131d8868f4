"""A message kept in the local outbox while offline (``send`` printed ``pending`` and
exited 0) that the relay then refuses for good is not dropped silently: the next
``recv`` shows a bounce line for it (attack round, session 8: before, only a log
warning of the command that flushed the outbox said so). Real ``wa-cli`` processes,
one in-process node on 127.0.0.1 stopped and started again (memory storage kept)."""

from __future__ import annotations

import trio
from cli_procs import lines, wa

from relay.testing import open_local_cluster

DEADLINE = 60
NOBODY = "a" * 52  # a well-formed user id that no account has


async def test_a_pending_message_refused_later_is_shown_as_a_bounce(tmp_path):
    with trio.fail_after(DEADLINE):
        async with open_local_cluster(1) as cluster:
            await wa(tmp_path / "a", "init", "--trust-on-first-use", "--name", "alice",
                     "--relay", cluster.urls["n1"])
            cluster.stop("n1")
            (sent,) = lines(await wa(tmp_path / "a", "--json", "send", NOBODY, "hello?"))
            assert sent["status"] == "pending", sent
            await cluster.start("n1")
            got = lines(await wa(tmp_path / "a", "--json", "recv", "--timeout", "0.5"))
            bounces = [g for g in got if g["type"] == "bounce"]
            assert [(b["id"], b["to"], b["code"]) for b in bounces] == [
                (sent["id"], NOBODY, "unknown_user")], got
            assert "pending" in bounces[0]["message"], bounces
            assert lines(await wa(tmp_path / "a", "--json", "outbox")) == []
            again = lines(await wa(tmp_path / "a", "--json", "recv", "--timeout", "0.5"))
            assert [g for g in again if g["type"] == "bounce"] == []  # shown once
