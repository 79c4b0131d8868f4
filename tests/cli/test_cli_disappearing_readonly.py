"""A disappearing message whose time ran out since the last writing command: the
read-only ``wa-cli history`` (the shared lock, also beside a running daemon) hides it
at once and still exits 0; the next writing command removes it from the files too."""

from __future__ import annotations

import time

import trio
from cli_cluster import run_cluster
from cli_procs import Running, lines, wa

DEADLINE = 60


async def test_history_hides_an_expired_message_without_writing(tmp_path):
    daemon = None
    try:
        with trio.fail_after(DEADLINE):
            async with run_cluster(1) as cluster:
                homes = {n: tmp_path / n for n in ("alice", "bob")}
                ids = {}
                for name, home in homes.items():
                    (made,) = lines(await wa(home, "--json", "init", "--trust-on-first-use",
                                             "--name", name, "--relay", cluster.urls["n1"]))
                    ids[name] = made["user_id"]
                await wa(homes["alice"], "contacts", "add", "bob", ids["bob"])
                await wa(homes["bob"], "contacts", "add", "alice", ids["alice"])
                await wa(homes["alice"], "disappear", "bob", "1")
                (sent,) = lines(await wa(homes["alice"], "--json", "send", "bob", "soon gone"))
                sent_at = time.monotonic()
                got = lines(await wa(homes["bob"], "--json", "recv", "--timeout", "0.3"))
                assert sent["id"] in [g.get("id") for g in got]
                daemon = await Running.start(homes["bob"], "--json", "daemon")
                await daemon.json()
                # once past the 1 s timer, with no writing command run on either home,
                # history reads beside the daemon (bob) and alone (alice): every call
                # exits 0, and the message is hidden once its time is up
                for home in homes.values():
                    while sent["id"] in [r["id"] for r in lines(await wa(home, "--json",
                                                                         "history"))]:
                        assert time.monotonic() < sent_at + 10, "it did not disappear"
                code, _ = await daemon.stop()
                assert code == 0
    finally:
        if daemon is not None:
            await daemon.aclose()
