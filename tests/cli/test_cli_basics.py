"""The messaging basics through real ``wa-cli`` processes against in-process relay nodes
(two nodes, so copies cross homes): replies, reactions, edits, deletes for everyone,
delivery and read receipts, typing (ephemeral), disappearing messages, blocking,
message requests, group leave/rename/promote, stdin and history export -- from
alice's device to bob's two devices, 1:1 and in a group."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import cli_procs
import trio
from cli_cluster import run_cluster

from cli.client import open_client
from cli.features.linking import link_device
from cli.session.state import open_state

DEADLINE = 120


async def wa(home, *args, check=True, stdin: bytes | None = None):
    """Run ``wa-cli --home HOME --json ARGS``; returns the completed process."""
    return await cli_procs.wa(home, "--json", *args, check=check, stdin=stdin)


def lines(proc) -> list[dict]:
    return [json.loads(line) for line in proc.stdout.decode().splitlines() if line.strip()]


async def both(*calls):
    """Run ``wa`` calls at once; their completed processes, in order."""
    out = [None] * len(calls)

    async def one(i, call):
        out[i] = await call

    async with trio.open_nursery() as nursery:
        for i, call in enumerate(calls):
            nursery.start_soon(one, i, call)
    return out


async def recv(home) -> list[dict]:
    """What ``recv --json`` prints, device-list change notices left out."""
    return [m for m in lines(await wa(home, "recv", "--timeout", "0.3"))
            if m.get("type") != "devices_changed"]


async def history(home, *args) -> dict[str, dict]:
    return {row["id"]: row for row in lines(await wa(home, "history", *args))}


async def accounts(tmp_path, cluster):
    """alice (one device) and bob (phone + laptop), contacts of each other, receipts on."""
    relay = cluster.urls["n1"]
    homes = {n: tmp_path / n for n in ("alice", "bob", "laptop")}
    (alice,), (bob,) = [lines(p) for p in await both(
        wa(homes["alice"], "init", "--trust-on-first-use", "--name", "alice", "--relay", relay),
        wa(homes["bob"], "init", "--trust-on-first-use", "--name", "bob", "--relay", cluster.urls["n2"]))]
    await both(wa(homes["alice"], "contacts", "add", "bob", bob["user_id"]),
               wa(homes["bob"], "contacts", "add", "alice", alice["user_id"]))
    with open_state(homes["bob"]) as state:  # the laptop gets bob's contacts when linked
        async with open_client(state) as client:
            await link_device(client, homes["laptop"], "laptop", history=False)
    await both(*(wa(h, "settings", "--receipts", "on") for h in homes.values()))
    return alice["user_id"], bob["user_id"], homes


async def test_one_to_one_basics_reach_both_devices(tmp_path):
    with trio.fail_after(DEADLINE):
        async with run_cluster(2) as cluster:
            alice_id, bob_id, h = await accounts(tmp_path, cluster)
            (m1,) = lines(await wa(h["alice"], "send", "bob", "-", stdin=b"hello\nworld\n"))
            phone, laptop = await both(recv(h["bob"]), recv(h["laptop"]))
            for got in (phone, laptop):
                assert [(m["id"], m["text"], m["from_name"], m["type"]) for m in got] == [
                    (m1["id"], "hello\nworld", "alice", "text")]
            (m2,) = lines(await wa(h["bob"], "send", "alice", "--reply-to", m1["id"][:8],
                                   "hi back"))
            got = await recv(h["alice"])
            receipts = [m for m in got if m["type"] == "receipt"]
            assert len(receipts) == 2  # one per bob device, each: delivered m1
            assert all(r["receipt"] == {"status": "delivered", "ids": [m1["id"]]}
                       and r["from"] == bob_id for r in receipts)
            (reply,) = [m for m in got if m["type"] == "text"]
            assert (reply["id"], reply["text"], reply["reply_to"]) == (m2["id"], "hi back",
                                                                        m1["id"])

            await wa(h["alice"], "edit", m1["id"], "hello, edited")
            await wa(h["alice"], "react", m2["id"], "👍")
            (m3,) = lines(await wa(h["alice"], "send", "bob", "oops"))
            await wa(h["alice"], "delete", m3["id"])
            phone, laptop = await both(recv(h["bob"]), recv(h["laptop"]))
            assert [(m["type"], m["direction"], m["id"]) for m in laptop][:1] == [
                ("text", "out", m2["id"])]  # what bob's phone sent, on bob's laptop
            for got in (phone, laptop):
                got = [m for m in got if m["type"] != "receipt" and m["direction"] == "in"]
                kinds = [(m["type"], m.get("edit_of") or m.get("deleted")
                          or (m.get("reaction") or {}).get("target") or m["id"]) for m in got]
                assert kinds == [("edit", m1["id"]), ("reaction", m2["id"]), ("text", m3["id"]),
                                 ("delete", m3["id"])]
                assert got[0]["text"] == "hello, edited"
                assert got[1]["reaction"]["emoji"] == "👍"
            await wa(h["laptop"], "react", m1["id"], "❤")  # removable, from bob's other device
            await wa(h["laptop"], "react", m1["id"], "--remove")
            await wa(h["bob"], "read", "alice")

            rows = await both(history(h["bob"]), history(h["laptop"]), history(h["alice"]))
            for hist in rows:  # the same history on every device of both accounts
                assert hist[m1["id"]]["text"] == "hello, edited" and hist[m1["id"]]["edited"]
                assert "reactions" not in hist[m1["id"]]  # added, then removed
                assert hist[m2["id"]]["reply_to"] == m1["id"]
                assert hist[m2["id"]]["reactions"] == {alice_id: "👍"}
                assert hist[m3["id"]]["deleted"] is True and hist[m3["id"]]["text"] == ""
            bob_hist = rows[0]
            assert bob_hist[m1["id"]]["read"] is True
            got = await recv(h["alice"])
            reactions = [m["reaction"] for m in got if m["type"] == "reaction"]
            assert reactions == [{"target": m1["id"], "emoji": "❤"},
                                 {"target": m1["id"], "emoji": ""}]
            reads = [m["receipt"] for m in got if m["type"] == "receipt"
                     and m["receipt"]["status"] == "read"]
            assert reads == [{"status": "read", "ids": [m1["id"]]}]
            alice_hist = await history(h["alice"])
            assert alice_hist[m1["id"]]["receipt"] == {"delivered": [bob_id], "read": [bob_id]}

            export = tmp_path / "export.json"
            (done,) = lines(await wa(h["laptop"], "history", "--export", str(export)))
            doc = json.loads(export.read_text())
            assert done["exported"] == len(doc["messages"]) == 3
            assert [m["id"] for m in doc["messages"]] == [m1["id"], m2["id"], m3["id"]]
            assert (export.stat().st_mode & 0o777) == 0o600


async def test_group_basics_and_admin_changes(tmp_path):
    with trio.fail_after(DEADLINE):
        async with run_cluster(2) as cluster:
            alice_id, bob_id, h = await accounts(tmp_path, cluster)
            (made,) = lines(await wa(h["alice"], "group", "create", "team", "bob"))
            gid = made["group_id"]
            (g1,) = lines(await wa(h["alice"], "send", "--group", "team", "g1"))
            phone, laptop = await both(recv(h["bob"]), recv(h["laptop"]))
            for got in (phone, laptop):
                assert [(m["type"], m["text"]) for m in got if m["type"] == "text"] == [
                    ("text", "g1")]
            (g2,) = lines(await wa(h["laptop"], "send", "--group", "team", "--reply-to",
                                   g1["id"], "g-reply"))
            (g3,) = lines(await wa(h["alice"], "send", "--group", "team", "to delete"))
            await wa(h["alice"], "edit", g1["id"], "g1 edited")
            await wa(h["alice"], "delete", g3["id"])
            await wa(h["alice"], "disappear", "--group", "team", "1")
            (g4,) = lines(await wa(h["alice"], "send", "--group", "team", "vanishing"))
            phone, laptop, mine = await both(recv(h["bob"]), recv(h["laptop"]),
                                             recv(h["alice"]))
            (copy,) = [m for m in phone if m["id"] == g2["id"]]  # the laptop's, on the phone
            assert (copy["direction"], copy["reply_to"]) == ("out", g1["id"])
            for got in (phone, laptop):
                texts = [m for m in got if m.get("type") in ("text", "edit", "delete",
                                                             "reaction", "timer")
                         and m["direction"] == "in"]
                assert [m["type"] for m in texts] == ["text", "edit", "delete", "timer", "text"]
                assert texts[-1]["expires_in"] == 1 and texts[-1]["group_id"] == gid
            assert [m["reply_to"] for m in mine if m.get("type") == "text"] == [g1["id"]]
            assert {m["from"] for m in mine if m.get("type") == "receipt"} == {bob_id}
            await wa(h["alice"], "react", g2["id"], "🎉")
            phone, laptop = await both(recv(h["bob"]), recv(h["laptop"]))
            for got in (phone, laptop):
                assert [m["reaction"] for m in got if m["type"] == "reaction"] == [
                    {"target": g2["id"], "emoji": "🎉"}]
            for home in (h["bob"], h["laptop"], h["alice"]):
                hist = await history(home)
                assert hist[g1["id"]]["text"] == "g1 edited"
                assert hist[g2["id"]]["reactions"] == {alice_id: "🎉"}
                assert hist[g3["id"]]["deleted"] is True
            deadline = time.monotonic() + 10  # g4 disappears 1 s after it was sent
            for home in (h["bob"], h["laptop"], h["alice"]):
                while g4["id"] in await history(home):
                    assert time.monotonic() < deadline, f"{g4['id']} did not disappear"

            await wa(h["alice"], "group", "promote", "team", "bob")
            await wa(h["alice"], "group", "rename", "team", "crew")
            await recv(h["bob"])  # bob's primary learns both changes
            (left,) = lines(await wa(h["bob"], "group", "leave", "crew"))
            assert bob_id not in [m["user_id"] for m in left["members"]]
            got = [m for m in await recv(h["alice"]) if m.get("type") == "group_changed"]
            assert got[-1]["removed"] == [bob_id] and got[-1]["by"] == bob_id
            (info,) = lines(await wa(h["alice"], "group", "info", gid))
            assert (info["group"], [m["user_id"] for m in info["members"]]) == ("crew",
                                                                                 [alice_id])
            laptop = [m for m in await recv(h["laptop"]) if m.get("type") == "group_changed"]
            assert laptop[-1]["left"] is True and laptop[-1]["group"] == "crew"


async def test_block_requests_and_typing(tmp_path):
    with trio.fail_after(DEADLINE):
        async with run_cluster(2) as cluster:
            alice_id, bob_id, h = await accounts(tmp_path, cluster)
            dave_home = tmp_path / "dave"
            (dave,) = lines(await wa(dave_home, "init", "--trust-on-first-use", "--name", "dave", "--relay",
                                     cluster.urls["n1"]))
            await wa(h["bob"], "settings", "--requests", "hold")
            (d1,) = lines(await wa(dave_home, "send", bob_id, "hi, it's dave"))
            (req,) = await recv(h["bob"])
            assert (req["type"], req["kind"], req["key"], req["id"]) == (
                "request", "user", dave["user_id"], d1["id"])
            assert d1["id"] not in await history(h["bob"])  # held, not shown
            (waiting,) = lines(await wa(h["bob"], "requests"))
            assert (waiting["key"], waiting["messages"]) == (dave["user_id"], 1)
            (shown,) = lines(await wa(h["bob"], "requests", "accept", dave["user_id"][:10],
                                      "--name", "dave"))
            assert (shown["id"], shown["text"], shown["from_name"]) == (d1["id"],
                                                                        "hi, it's dave", "dave")
            (d2,) = lines(await wa(dave_home, "send", bob_id, "second"))
            assert [m["id"] for m in await recv(h["bob"])] == [d2["id"]]

            # a group invitation from a stranger waits too, with the group's messages
            (group,) = lines(await wa(dave_home, "group", "create", "dave-club", bob_id))
            await wa(h["bob"], "contacts", "remove", "dave")
            (g1,) = lines(await wa(dave_home, "send", "--group", "dave-club", "welcome"))
            got = await recv(h["bob"])
            assert [(m["type"], m["kind"], m["key"]) for m in got] == [
                ("request", "group", group["group_id"])] * 2
            accepted = lines(await wa(h["bob"], "requests", "accept", group["group_id"]))
            assert [m["text"] for m in accepted] == ["welcome"]

            # blocked: dropped and acknowledged (never shown, even after unblocking)
            await wa(h["bob"], "contacts", "block", dave["user_id"])
            await wa(dave_home, "send", bob_id, "you can't see this")
            assert await recv(h["bob"]) == []
            await wa(h["bob"], "contacts", "unblock", dave["user_id"])
            assert await recv(h["bob"]) == []

            # typing: live to a connected device, never stored for an offline one
            follow = await trio.lowlevel.open_process(
                [sys.executable, "-m", "cli", "--home", str(h["laptop"]), "--json", "recv",
                 "--follow"], stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
            try:
                (marker,) = lines(await wa(h["alice"], "send", "bob", "are you there?"))
                buf = b""
                while marker["id"].encode() not in buf:  # the laptop is synced and live
                    buf += await follow.stdout.receive_some()
                (typed,) = lines(await wa(h["alice"], "typing", "bob"))
                assert typed["typing"] is True
                while b'"typing"' not in buf:
                    buf += await follow.stdout.receive_some()
                (line,) = [json.loads(x) for x in buf.decode().splitlines()
                           if '"typing"' in x]
                assert (line["type"], line["typing"], line["from"]) == ("typing", True,
                                                                        alice_id)
            finally:
                follow.terminate()
                await follow.wait()
            # bob's phone was offline: it gets the message, never the typing
            assert [m["type"] for m in await recv(h["bob"])] == ["text"]
