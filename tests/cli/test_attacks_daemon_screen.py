"""Attacks on "exactly once on screen" through the daemon (issue 15): ``wa-cli recv``
served by ``wa-cli daemon`` stopped by a reader that closes its stdout (``recv | head
-n 3``) or by SIGKILL, while the daemon hands it a backlog. Every message must be on
the screen once over this run and the next one (a repeat only flagged "maybe shown
before"). Real ``wa-cli`` processes against an in-process node on 127.0.0.1."""

from __future__ import annotations

import signal

import trio
from cli_cluster import run_cluster
from cli_procs import Running, lines, wa
from test_cli_daemon import RpcSocket, start_daemon, two_accounts

from relay.testing import open_local_cluster

DEADLINE = 90
BACKLOG = 12


async def _backlog(tmp_path, bob: dict) -> list[str]:
    texts = [f"m{i}" for i in range(BACKLOG)]
    for t in texts:
        (sent,) = lines(await wa(tmp_path / "a", "--json", "send", bob["user_id"], t))
        assert sent["status"] == "stored"
    return texts


def _seen(got: list[dict]) -> tuple[list[str], list[str]]:
    """Texts shown (in order) and the ones among them flagged maybe_shown."""
    texts = [g for g in got if g.get("type") == "text"]
    return [g["text"] for g in texts], [g["text"] for g in texts if g.get("maybe_shown")]


async def _rest(tmp_path) -> list[dict]:
    return lines(await wa(tmp_path / "b", "--json", "recv", "--timeout", "1"))


async def _check(first: list[str], rest: list[dict], texts: list[str]) -> None:
    again, flagged = _seen(rest)
    unflagged_repeats = [t for t in again if t in first and t not in flagged]
    assert unflagged_repeats == [], (first, again)
    union = first + [t for t in again if t not in first]
    assert union == texts, (first, again)  # nothing lost from the screen, in order


async def test_recv_through_the_daemon_whose_reader_stops_after_three_loses_nothing(tmp_path):
    daemon = recv = None
    try:
        with trio.fail_after(DEADLINE):
            async with run_cluster(1) as cluster:
                _, bob = await two_accounts(tmp_path, cluster.urls["n1"])
                daemon, _ = await start_daemon(tmp_path / "b")
                texts = await _backlog(tmp_path, bob)
                recv = await Running.start(tmp_path / "b", "--json", "recv", "--timeout", "2")
                first = [(await recv.json())["text"] for _ in range(3)]
                await recv.proc.stdout.aclose()  # like `recv | head -n 3`
                await recv.proc.wait()
                await _check(first, await _rest(tmp_path), texts)
    finally:
        for proc in (recv, daemon):
            if proc is not None:
                await proc.aclose()


async def test_recv_through_the_daemon_killed_after_three_loses_nothing(tmp_path):
    daemon = recv = None
    try:
        with trio.fail_after(DEADLINE):
            async with run_cluster(1) as cluster:
                _, bob = await two_accounts(tmp_path, cluster.urls["n1"])
                daemon, _ = await start_daemon(tmp_path / "b")
                texts = await _backlog(tmp_path, bob)
                recv = await Running.start(tmp_path / "b", "--json", "recv", "--follow")
                first = [(await recv.json())["text"] for _ in range(3)]
                recv.proc.send_signal(signal.SIGKILL)
                await recv.proc.wait()
                await _check(first, await _rest(tmp_path), texts)
    finally:
        for proc in (recv, daemon):
            if proc is not None:
                await proc.aclose()


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
