"""Issue 15, "One size budget, end to end ... a clear error (``too_large``, with the
limit) that ``wa-cli`` shows; the client checks before sending": on a cluster whose
size budget is small (``max_envelope`` 4096 in its signed description), ``wa-cli send``
of a text whose copy is larger is refused by the client itself, naming the limit,
and nothing reaches the node; a text that fits is delivered. Real ``wa-cli``
processes, one in-process node on 127.0.0.1."""

from __future__ import annotations

import trio
from cli_procs import lines, wa

from relay.testing import open_local_cluster

MAX_ENVELOPE = 4096


async def test_wa_cli_refuses_an_envelope_above_the_clusters_budget_before_sending(tmp_path):
    with trio.fail_after(60):
        async with open_local_cluster(1, max_envelope=MAX_ENVELOPE) as cluster:
            url = cluster.urls["n1"]
            (bob,) = lines(await wa(tmp_path / "b", "--json", "init", "--trust-on-first-use",
                                    "--name", "bob", "--relay", url))
            (alice,) = lines(await wa(tmp_path / "a", "--json", "init", "--trust-on-first-use",
                                      "--name", "alice", "--relay", url))
            await wa(tmp_path / "b", "contacts", "add", "alice", alice["user_id"])
            storage = cluster.storages["n1"]

            big = await wa(tmp_path / "a", "send", bob["user_id"], "x" * 5000, check=False)
            err = big.stderr.decode()
            assert big.returncode == 1, err
            assert "too_large" in err and f"exceeds the limit of {MAX_ENVELOPE} bytes" in err
            assert "(not sent)" in err  # refused by wa-cli, not by the node
            assert await storage.queue_length(bob["user_id"], 0) == 0

            (ok,) = lines(await wa(tmp_path / "a", "--json", "send", bob["user_id"],
                                   "y" * 3000))
            assert ok["status"] == "stored"
            shown = lines(await wa(tmp_path / "b", "--json", "recv", "--timeout", "0.5"))
            assert [m["text"] for m in shown if m["type"] == "text"] == ["y" * 3000]
