"""The daemon's local outbox keeps the order of what it sends (an attack that held,
session 8): messages kept ``pending`` during an outage go before one sent right after
the daemon reconnected. Real ``wa-cli`` processes against an in-process node on
127.0.0.1. (recv through the daemon: tests/cli/test_cli_daemon_recv_screen.py.)"""

from __future__ import annotations

import trio
from cli_procs import lines, wa
from test_cli_daemon import RpcSocket, start_daemon, two_accounts

from relay.testing import open_local_cluster

DEADLINE = 90


async def test_a_send_through_the_daemon_waits_for_the_outbox_it_reconnected_with(tmp_path):
    """Messages kept in the local outbox during an outage (``pending``, exit 0) go
    before a message sent after the outage: the recipient shows them in the order
    they were sent, also when the new message comes while the daemon's outbox task is
    still sending the older ones over the new connection (held in session 8)."""
    daemon = rpc = None
    try:
        with trio.fail_after(DEADLINE):
            async with open_local_cluster(1) as cluster:  # memory storage kept across restarts
                _, bob = await two_accounts(tmp_path, cluster.urls["n1"])
                await wa(tmp_path / "a", "send", bob["user_id"], "warm up")  # lists cached
                cluster.stop("n1")
                daemon, where = await start_daemon(tmp_path / "a")
                rpc = RpcSocket(await trio.open_unix_socket(where["socket"]))
                kept = [f"p{i}" for i in range(40)]
                for rid, text in enumerate(kept, 1):
                    answer = await rpc.call(rid, "send", {"to": bob["user_id"], "text": text})
                    assert answer["result"]["status"] == "pending"
                await cluster.start("n1")
                rid = 100
                while len((await rpc.call(rid, "outbox"))["result"]) == len(kept):  # noqa: ASYNC110
                    rid += 1
                    await trio.sleep(0.001)  # poll until the daemon's outbox task began
                answer = await rpc.call(rid + 1, "send", {"to": bob["user_id"], "text": "after"})
                assert answer["result"]["status"] in ("stored", "pending")
                while (await rpc.call(rid + 2, "outbox"))["result"]:  # noqa: ASYNC110
                    await trio.sleep(0.02)
                got = lines(await wa(tmp_path / "b", "--json", "recv", "--timeout", "0.5"))
                assert [g["text"] for g in got if g["type"] == "text"] == ["warm up", *kept,
                                                                          "after"]
    finally:
        if rpc is not None:
            await rpc.stream.aclose()
        if daemon is not None:
            await daemon.aclose()
