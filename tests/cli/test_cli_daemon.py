"""``wa-cli daemon`` with real processes against in-process relay nodes on 127.0.0.1:
commands of one home side by side through it, JSON-RPC from a plain socket, the
local outbox across an outage, exit codes and signals."""

from __future__ import annotations

import json
import os
import random
import signal
import stat

import trio
from cli_cluster import run_cluster
from cli_procs import Running, lines, signal_before_our_code, wa, without_site_report

from relay.testing import open_local_cluster

DEADLINE = 60


async def two_accounts(tmp_path, relay: str) -> tuple[dict, dict]:
    """alice (home a) and bob (home b), each the other's contact (so no message request
    holds what they send each other)."""
    (alice,) = lines(await wa(tmp_path / "a", "--json", "init", "--trust-on-first-use", "--name", "alice",
                              "--relay", relay))
    (bob,) = lines(await wa(tmp_path / "b", "--json", "init", "--trust-on-first-use", "--name", "bob",
                            "--relay", relay))
    await wa(tmp_path / "a", "contacts", "add", "bob", bob["user_id"])
    await wa(tmp_path / "b", "contacts", "add", "alice", alice["user_id"])
    return alice, bob


def texts_and_receipts(got: list[dict]) -> tuple[list[dict], list[dict]]:
    """``recv --json`` lines split into the text messages and the receipts (on by
    default: each text that reaches a device sends its author a ``delivered`` one)."""
    return ([g for g in got if g["type"] == "text"],
            [g["receipt"] for g in got if g["type"] == "receipt"])


async def start_daemon(home) -> tuple[Running, dict]:
    daemon = await Running.start(home, "--json", "daemon")
    return daemon, await daemon.json()


async def test_recv_follow_and_send_on_one_home_at_once(tmp_path):
    follow = daemon = None
    try:
        with trio.fail_after(DEADLINE):
            async with run_cluster(1) as cluster:
                alice, bob = await two_accounts(tmp_path, cluster.urls["n1"])
                daemon, where = await start_daemon(tmp_path / "b")
                sock = tmp_path / "b" / "daemon.sock"
                assert where == {"socket": str(sock)}
                assert stat.S_IMODE(os.stat(sock).st_mode) == 0o600
                follow = await Running.start(tmp_path / "b", "--json", "recv", "--follow")
                # bob sends while his recv --follow runs: both through the daemon
                (sent,) = lines(await wa(tmp_path / "b", "--json", "send", alice["user_id"],
                                         "from bob"))
                assert sent["status"] == "stored" and sent["to"] == alice["user_id"]
                (to_bob,) = lines(await wa(tmp_path / "a", "--json", "send", bob["user_id"],
                                           "to bob"))
                got = await follow.json()
                assert (got["text"], got["from"]) == ("to bob", alice["user_id"])
                # read-only commands read the state beside the daemon
                (ident,) = lines(await wa(tmp_path / "b", "--json", "id"))
                assert ident["user_id"] == bob["user_id"]
                (mine,) = lines(await wa(tmp_path / "b", "--json", "history", "--limit", "1"))
                assert mine["text"] == "to bob"
                # changing commands go through it too, and the readers see the change
                (added,) = lines(await wa(tmp_path / "b", "--json", "contacts", "add", "someone",
                                          "b" * 52))
                assert added == {"name": "someone", "user_id": "b" * 52}
                listed = lines(await wa(tmp_path / "b", "--json", "contacts", "list"))
                assert {"name": "someone", "user_id": "b" * 52} in listed
                # what needs the device to itself names the daemon's pid
                busy = await wa(tmp_path / "b", "daemon", check=False)
                assert busy.returncode == 1
                assert f"daemon (process {daemon.proc.pid})" in busy.stderr.decode()
                got, receipts = texts_and_receipts(
                    lines(await wa(tmp_path / "a", "--json", "recv", "--timeout", "0.2")))
                assert [g["text"] for g in got] == ["from bob"]
                # bob's daemon told alice that "to bob" was delivered
                assert receipts == [{"status": "delivered", "ids": [to_bob["id"]]}]
                # group commands go through the daemon too
                (made,) = lines(await wa(tmp_path / "b", "--json", "group", "create", "team",
                                         alice["user_id"]))
                assert made["group"] == "team" and made["admin"] is True
                (to_team,) = lines(await wa(tmp_path / "b", "--json", "send", "--group", "team",
                                            "to team"))
                assert (to_team["status"], to_team["group"]) == ("stored", "team")
                got = lines(await wa(tmp_path / "a", "--json", "recv", "--timeout", "0.3"))
                assert [g.get("text") for g in got if g.get("type") == "text"] == ["to team"]
                # SIGTERM stops recv --follow at once, with 0
                start = trio.current_time()
                code, err = await follow.stop(signal.SIGTERM)
                assert code == 0 and "Traceback" not in err
                assert trio.current_time() - start < 0.5
                code, err = await daemon.stop(signal.SIGTERM)
                assert code == 0 and "Traceback" not in err, err
                assert not sock.exists()
                # without the daemon, bob's device works as before
                await wa(tmp_path / "b", "send", alice["user_id"], "after")
    finally:
        for proc in (follow, daemon):
            if proc is not None:
                await proc.aclose()


class RpcSocket:
    """A JSON-RPC client made of a Unix socket and ``json`` (no project code)."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.buf = b""
        self.notes: list[dict] = []

    async def line(self) -> dict:
        while b"\n" not in self.buf:
            chunk = await self.stream.receive_some()
            assert chunk, "the daemon closed the connection"
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return json.loads(line)

    async def raw(self, data: bytes) -> dict | list:
        await self.stream.send_all(data)
        while True:
            msg = await self.line()
            if isinstance(msg, list) or "id" in msg:
                return msg
            self.notes.append(msg)

    async def call(self, rid: int, method: str, params: dict | None = None) -> dict:
        req = {"jsonrpc": "2.0", "id": rid, "method": method}
        if params is not None:
            req["params"] = params
        return await self.raw(json.dumps(req).encode() + b"\n")

    async def note(self) -> dict:
        if self.notes:
            return self.notes.pop(0)
        return await self.line()


async def test_a_plain_socket_client_sends_and_subscribes(tmp_path):
    daemon = None
    try:
        with trio.fail_after(DEADLINE):
            async with run_cluster(1) as cluster:
                alice, bob = await two_accounts(tmp_path, cluster.urls["n1"])
                (before,) = lines(await wa(tmp_path / "b", "--json", "send", alice["user_id"],
                                           "waiting before"))
                daemon, where = await start_daemon(tmp_path / "a")
                rpc = RpcSocket(await trio.open_unix_socket(where["socket"]))
                sub = await rpc.call(1, "receive")
                assert sub == {"jsonrpc": "2.0", "id": 1, "result": {"subscription": 1}}
                first = await rpc.note()  # what waited comes first
                assert first["method"] == "receive"
                assert first["params"]["event"]["text"] == "waiting before"
                assert first["params"]["text"].endswith(": waiting before")
                sent = await rpc.call(2, "send", {"to": bob["user_id"], "text": "hi bob"})
                assert sent["result"]["status"] == "stored"
                assert len(sent["result"]["id"]) == 32
                (got,), receipts = texts_and_receipts(
                    lines(await wa(tmp_path / "b", "--json", "recv", "--timeout", "0.2")))
                assert (got["text"], got["id"]) == ("hi bob", sent["result"]["id"])
                assert receipts == [{"status": "delivered", "ids": [before["id"]]}]
                await wa(tmp_path / "b", "send", alice["user_id"], "live")
                receipt = await rpc.note()  # bob's recv above said "hi bob" was delivered
                assert receipt["params"]["event"]["receipt"] == {
                    "status": "delivered", "ids": [sent["result"]["id"]]}
                live = await rpc.note()
                assert live["params"]["event"]["text"] == "live"
                assert live["params"]["subscription"] == 1
                # errors: the spec's codes and the daemon's own
                assert (await rpc.raw(b"{not json\n"))["error"]["code"] == -32700
                assert (await rpc.call(3, "nope"))["error"]["code"] == -32601
                bad = await rpc.call(4, "send", {"to": "nobody", "text": "x"})
                assert bad["error"]["code"] == -32001
                assert bad["error"]["data"] == {"reason": "unknown_contact"}
                bad = await rpc.call(5, "send", {"group": "nogroup", "text": "x"})
                assert bad["error"]["data"] == {"reason": "unknown_group"}
                assert (await rpc.call(6, "send", ["x"]))["error"]["code"] == -32602
                batch = await rpc.raw(b'[{"jsonrpc":"2.0","id":7,"method":"id"},'
                                      b'{"jsonrpc":"2.0","method":"id"}]\n')
                assert batch == [{"jsonrpc": "2.0", "id": 7, "result": {
                    "user_id": alice["user_id"], "device_id": 0, "name": "alice",
                    "home": cluster.urls["n1"], "connected": True}}]
                hist = await rpc.call(8, "history", {"limit": 2})
                assert [h["text"] for h in hist["result"]] == ["hi bob", "live"]
                assert (await rpc.call(9, "unsubscribe", {"subscription": 1}))["result"] is True
                await rpc.stream.aclose()
                code, _ = await daemon.stop()
                assert code == 0
    finally:
        if daemon is not None:
            await daemon.aclose()


async def test_a_send_during_an_outage_is_delivered_once_when_the_relay_returns(tmp_path):
    daemon = None
    try:
        with trio.fail_after(DEADLINE):
            async with open_local_cluster(1) as cluster:  # memory storage kept across restarts
                relay = cluster.urls["n1"]
                alice, bob = await two_accounts(tmp_path, relay)
                await wa(tmp_path / "a", "send", bob["user_id"], "warm up")  # lists cached
                cluster.stop("n1")
                # a command: kept in the outbox, exit 0
                (kept,) = lines(await wa(tmp_path / "a", "--json", "--connect-timeout", "1",
                                         "send", bob["user_id"], "during the outage"))
                assert kept["status"] == "pending"
                (waiting,) = lines(await wa(tmp_path / "a", "--json", "outbox"))
                assert waiting["id"] == kept["id"] and waiting["to"] == bob["user_id"]
                # the daemon: kept too while it has no connection, sent when it returns
                daemon, where = await start_daemon(tmp_path / "a")
                rpc = RpcSocket(await trio.open_unix_socket(where["socket"]))
                during = await rpc.call(1, "send", {"to": bob["user_id"], "text": "via daemon"})
                assert during["result"]["status"] == "pending"
                await cluster.start("n1")
                for rid in range(2, 10_000):  # polled until the daemon reconnected and sent
                    if not (await rpc.call(rid, "outbox"))["result"]:
                        break
                    await trio.sleep(0.05)
                got = lines(await wa(tmp_path / "b", "--json", "recv", "--timeout", "0.3"))
                assert [g["text"] for g in got] == ["warm up", "during the outage",
                                                    "via daemon"]
                await rpc.stream.aclose()
                code, _ = await daemon.stop()
                assert code == 0
                # nothing sent twice: the next connection of alice's has nothing to send
                await wa(tmp_path / "a", "recv", "--timeout", "0.2")
                assert lines(await wa(tmp_path / "b", "--json", "recv", "--timeout", "0.3")) == []
                assert lines(await wa(tmp_path / "a", "--json", "outbox")) == []
    finally:
        if daemon is not None:
            await daemon.aclose()


async def test_exit_codes_and_json_errors(tmp_path):
    with trio.fail_after(DEADLINE):
        async with run_cluster(1) as cluster:
            alice, bob = await two_accounts(tmp_path, cluster.urls["n1"])
            unknown = await wa(tmp_path / "a", "--json", "send", "nobody", "x", check=False)
            assert unknown.returncode == 2
            assert json.loads(unknown.stdout)["error"]["code"] == "unknown_contact"
            group = await wa(tmp_path / "a", "send", "--group", "nogroup", "x", check=False)
            assert group.returncode == 2 and "unknown group" in group.stderr.decode()
            group = await wa(tmp_path / "a", "send", "--json", "--group", "nogroup", "x",
                             check=False)
            assert json.loads(group.stdout)["error"]["code"] == "unknown_group"
            # text from stdin
            (sent,) = lines(await wa(tmp_path / "a", "--json", "send", bob["user_id"], "-",
                                     stdin=b"from stdin\n"))
            assert sent["status"] == "stored"
            (got,) = lines(await wa(tmp_path / "b", "--json", "recv", "--timeout", "0.2"))
            assert got["text"] == "from stdin"
            missing = await wa(tmp_path / "nohome", "--json", "id", check=False)
            assert missing.returncode == 1 and "Traceback" not in missing.stderr.decode()
            assert json.loads(missing.stdout)["error"]["code"] == "failed"


async def test_sigterm_stops_recv_follow_within_half_a_second(tmp_path):
    follow = None
    try:
        with trio.fail_after(DEADLINE):
            async with run_cluster(1) as cluster:
                alice, bob = await two_accounts(tmp_path, cluster.urls["n1"])
                follow = await Running.start(tmp_path / "b", "--json", "recv", "--follow")
                await wa(tmp_path / "a", "send", bob["user_id"], "hello")
                assert (await follow.json())["text"] == "hello"
                start = trio.current_time()
                code, err = await follow.stop(signal.SIGTERM)
                assert (code, "Traceback" in err) == (0, False)
                assert trio.current_time() - start < 0.5
    finally:
        if follow is not None:
            await follow.aclose()


async def test_recv_follow_through_a_daemon_that_stops_says_to_run_recv_again(tmp_path):
    """The README's two terminals: ``recv --follow`` goes through the daemon; SIGTERM
    to the daemon ends it with exit 1 and a hint, not a bare "the daemon closed the
    connection"; ``recv`` then runs on its own and gets what came meanwhile."""
    follow = daemon = None
    try:
        with trio.fail_after(DEADLINE):
            async with run_cluster(1) as cluster:
                alice, bob = await two_accounts(tmp_path, cluster.urls["n1"])
                daemon, _ = await start_daemon(tmp_path / "b")
                follow = await Running.start(tmp_path / "b", "--json", "recv", "--follow")
                await wa(tmp_path / "a", "send", bob["user_id"], "hello")
                assert (await follow.json())["text"] == "hello"
                code, err = await daemon.stop(signal.SIGTERM)
                assert (code, "Traceback" in err) == (0, False), err
                code, err = await follow.finish()
                assert code == 1 and "Traceback" not in err, err
                assert "the daemon closed the connection (it stopped); run 'wa-cli recv' again" \
                    in err, err
                await wa(tmp_path / "a", "send", bob["user_id"], "after")
                got = lines(await wa(tmp_path / "b", "--json", "recv", "--timeout", "0.3"))
                texts = [(g["text"], g.get("maybe_shown", False)) for g in got
                         if g["type"] == "text"]
                # "hello" again only if the daemon stopped before recv's "shown" answer
                # reached it, and then flagged (docs/cli.md, "Exactly once on screen")
                assert texts in ([("after", False)], [("hello", True), ("after", False)]), texts
    finally:
        for proc in (follow, daemon):
            if proc is not None:
                await proc.aclose()


CTRL_C_TRIALS = int(os.environ.get("WA_CTRL_C_TRIALS", "50"))  # issue 14: 50 trials (~25 s)


async def test_ctrl_c_at_random_moments_of_send(tmp_path):
    """Exit 0 iff the message reaches the recipient, shown once; 130 iff it does not.
    The moments spread over start-up, connecting, encrypting, the request in flight
    and after the answer (seeded, so a failure can be replayed)."""
    rng = random.Random(int(os.environ.get("WA_CTRL_C_SEED", "1414")))
    with trio.fail_after(DEADLINE + 4 * CTRL_C_TRIALS):
        async with run_cluster(1) as cluster:
            alice, bob = await two_accounts(tmp_path, cluster.urls["n1"])
            await wa(tmp_path / "a", "send", bob["user_id"], "warm up")
            (full,) = lines(await wa(tmp_path / "b", "--json", "recv", "--timeout", "0.2"))
            start = trio.current_time()
            await wa(tmp_path / "a", "send", bob["user_id"], "timed", fresh=True)
            span = trio.current_time() - start  # how long one whole send takes here
            codes = {}
            for i in range(CTRL_C_TRIALS):
                send = await Running.start(tmp_path / "a", "--json", "send", bob["user_id"],
                                           f"trial {i}", fresh=True)  # start-up is a moment
                try:
                    await trio.sleep(rng.uniform(0.0, span * 1.1))  # the random moment
                    send.proc.send_signal(signal.SIGINT)
                    code, err = await send.finish()
                finally:
                    await send.aclose()
                err = without_site_report(err)
                if signal_before_our_code(code, err):
                    code = 130  # the interpreter itself, in its first ~50 ms (docs/cli.md)
                else:  # -SIGINT: killed before Python set up its handler (a shell shows 130)
                    assert code in (0, 130, -signal.SIGINT), err
                    assert "Traceback" not in err, err
                codes[f"trial {i}"] = code
            got = lines(await wa(tmp_path / "b", "--json", "recv", "--timeout", "0.5"))
            texts = [g["text"] for g in got if g["text"].startswith("trial ")]
            assert len(texts) == len(set(texts))  # never shown twice
            assert sorted(texts) == sorted(t for t, c in codes.items() if c == 0), codes
            assert full["text"] == "warm up"


async def test_the_messaging_basics_over_json_rpc(tmp_path):
    """sendReaction, send with reply_to, edit, delete and sendReceipt reach the other
    account as the wa-cli commands' payloads do; bad targets are usage errors."""
    daemon = None
    try:
        with trio.fail_after(DEADLINE):
            async with run_cluster(1) as cluster:
                alice, bob = await two_accounts(tmp_path, cluster.urls["n1"])
                await wa(tmp_path / "a", "settings", "--receipts", "on")
                (m1,) = lines(await wa(tmp_path / "b", "--json", "send", alice["user_id"],
                                       "hello alice"))
                daemon, where = await start_daemon(tmp_path / "a")
                rpc = RpcSocket(await trio.open_unix_socket(where["socket"]))
                await rpc.call(1, "receive")
                assert (await rpc.note())["params"]["event"]["id"] == m1["id"]
                react = await rpc.call(2, "sendReaction", {"target": m1["id"][:8], "emoji": "👍"})
                assert react["result"]["status"] == "stored"
                assert (react["result"]["target"], react["result"]["reaction"]) == (m1["id"], "👍")
                reply = await rpc.call(3, "send", {"to": bob["user_id"], "text": "hi bob",
                                                   "reply_to": m1["id"]})
                mine = reply["result"]["id"]
                edited = await rpc.call(4, "edit", {"target": mine, "text": "hi bob!"})
                assert edited["result"]["target"] == mine
                read = await rpc.call(5, "sendReceipt", {"to": bob["user_id"]})
                assert read["result"] == {"read": [m1["id"]]}
                assert (await rpc.call(6, "sendReceipt", {}))["result"] == {"read": []}
                deleted = await rpc.call(7, "delete", {"target": mine})
                assert deleted["result"]["status"] == "stored"
                # refusals: unknown target, someone else's message, another conversation
                bad = await rpc.call(8, "sendReaction", {"target": "0" * 32, "emoji": "x"})
                assert bad["error"]["data"] == {"reason": "unknown_message"}
                bad = await rpc.call(9, "edit", {"target": m1["id"], "text": "mine now"})
                assert bad["error"]["data"] == {"reason": "not_yours"}
                bad = await rpc.call(10, "send", {"group": "nogroup", "text": "x",
                                                  "reply_to": m1["id"]})
                assert bad["error"]["data"] == {"reason": "unknown_group"}
                got = lines(await wa(tmp_path / "b", "--json", "recv", "--timeout", "0.5"))
                seen = [(g["type"], g.get("reaction") or g.get("reply_to") or g.get("edit_of")
                         or g.get("deleted") or g.get("receipt")) for g in got]
                assert seen == [
                    ("receipt", {"status": "delivered", "ids": [m1["id"]]}),
                    ("reaction", {"target": m1["id"], "emoji": "👍"}),
                    ("text", m1["id"]),
                    ("edit", mine),
                    ("receipt", {"status": "read", "ids": [m1["id"]]}),
                    ("delete", mine),
                ]
                await rpc.stream.aclose()
                code, _ = await daemon.stop()
                assert code == 0
    finally:
        if daemon is not None:
            await daemon.aclose()


async def test_tcp_on_loopback_serves_the_same_methods(tmp_path):
    """``daemon --tcp 0``: the first line names a 127.0.0.1 port; a plain TCP client
    calls the same methods as over the Unix socket, and nothing listens elsewhere."""
    daemon = None
    try:
        with trio.fail_after(DEADLINE):
            async with run_cluster(1) as cluster:
                alice, bob = await two_accounts(tmp_path, cluster.urls["n1"])
                daemon = await Running.start(tmp_path / "a", "--json", "daemon", "--tcp", "0")
                where = await daemon.json()
                host, _, port = where["tcp"].rpartition(":")
                assert host == "127.0.0.1" and int(port) > 0
                assert set(where) == {"socket", "tcp"}
                rpc = RpcSocket(await trio.open_tcp_stream("127.0.0.1", int(port)))
                who = await rpc.call(1, "id")
                assert who["result"]["user_id"] == alice["user_id"]
                rid = 10
                while not who["result"]["connected"]:  # the first line comes before the connection
                    await trio.sleep(0.05)
                    rid += 1
                    who = await rpc.call(rid, "id")
                sent = await rpc.call(2, "send", {"to": "bob", "text": "over tcp"})
                assert sent["result"]["status"] == "stored"
                texts, _ = texts_and_receipts(
                    lines(await wa(tmp_path / "b", "--json", "recv", "--timeout", "0.2")))
                assert [(t["text"], t["id"]) for t in texts] == [("over tcp", sent["result"]["id"])]
                await rpc.stream.aclose()
                code, _ = await daemon.stop()
                assert code == 0
    finally:
        if daemon is not None:
            await daemon.aclose()


async def test_ctrl_c_answers_the_send_in_flight_before_the_daemon_exits(tmp_path):
    """A JSON-RPC ``send`` already read when SIGINT comes is finished and answered
    (``stored``; ``pending``: kept and sent by the next daemon; or -32002 with the
    message id to retry), never dropped without an answer; an answered message reaches
    the recipient once (fault suite,
    ``daemon_kill``: SIGINT during a send left the client without any answer)."""
    daemon = None
    try:
        with trio.fail_after(DEADLINE):
            async with run_cluster(1) as cluster:
                alice, bob = await two_accounts(tmp_path, cluster.urls["n1"])
                daemon, where = await start_daemon(tmp_path / "a")
                rpc = RpcSocket(await trio.open_unix_socket(where["socket"]))
                for rid in range(100, 10**6):  # poll until connected (else: pending)
                    if (await rpc.call(rid, "id"))["result"]["connected"]:
                        break
                    await trio.sleep(0.02)
                request = {"jsonrpc": "2.0", "id": 2, "method": "send",
                           "params": {"to": bob["user_id"], "text": "in flight"}}
                await rpc.stream.send_all(json.dumps(request).encode() + b"\n")
                daemon.proc.send_signal(signal.SIGINT)  # while the send runs
                answer = await rpc.line()  # the connection must not close unanswered
                assert answer["id"] == 2, answer
                await rpc.stream.aclose()
                code, _ = await daemon.finish()
                assert code == 0
                if "result" in answer and answer["result"]["status"] == "pending":
                    # kept in the device's outbox: the next daemon sends it, once
                    daemon, where = await start_daemon(tmp_path / "a")
                    rpc = RpcSocket(await trio.open_unix_socket(where["socket"]))
                    for rid in range(3, 10**6):  # poll until the outbox is empty
                        if not (await rpc.call(rid, "outbox"))["result"]:
                            break
                        await trio.sleep(0.05)
                    await rpc.stream.aclose()
                    code, _ = await daemon.stop()
                    assert code == 0
                got = lines(await wa(tmp_path / "b", "--json", "recv", "--timeout", "0.3"))
                if "result" in answer:
                    assert answer["result"]["status"] in ("stored", "pending"), answer
                    assert [g["id"] for g in got] == [answer["result"]["id"]]
                else:
                    assert answer["error"]["code"] == -32002, answer
                    assert [g["id"] for g in got] in ([], [answer["error"]["data"]["id"]])
    finally:
        if daemon is not None:
            await daemon.aclose()
