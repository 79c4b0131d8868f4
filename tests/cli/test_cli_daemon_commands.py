"""Every ``wa-cli`` command of a home served by ``wa-cli daemon`` (real processes, relay
nodes on 127.0.0.1): the changing ones go through the daemon, the read-only ones read
beside it and see what it changed; none fails because the daemon holds the home."""

from __future__ import annotations

import json

import trio
from cli_cluster import run_cluster
from cli_procs import Running, lines, wa

DEADLINE = 150  # about 40 commands, one after another, each a process start
POLL = 0.05


async def init(home, name: str, relay: str) -> dict:
    (me,) = lines(await wa(home, "--json", "init", "--trust-on-first-use", "--name", name,
                           "--relay", relay))
    return me


async def one(home, *args) -> dict:
    """The one JSON line of ``wa-cli --json ARGS`` (exit 0, never the old refusal)."""
    proc = await wa(home, "--json", *args)
    assert b"daemon (process" not in proc.stderr, proc.stderr
    (obj,) = lines(proc)
    return obj


async def history_until(home, predicate) -> list[dict]:  # noqa: ANN001
    """``history --json`` of ``home`` once ``predicate(rows)`` holds (polled)."""
    while True:
        rows = lines(await wa(home, "--json", "history"))
        if predicate(rows):
            return rows
        await trio.sleep(POLL)


async def listed_until(home, args: tuple[str, ...], n: int) -> list[dict]:
    """The ``--json`` lines of ``wa-cli ARGS`` once there are ``n`` (polled)."""
    rows: list[dict] = []
    while len(rows) < n:
        rows = lines(await wa(home, "--json", *args))
        if len(rows) < n:
            await trio.sleep(POLL)
    return rows


async def test_every_command_runs_against_a_home_served_by_the_daemon(tmp_path):
    a, b, c, d = (tmp_path / x for x in "abcd")
    daemon = link = None
    try:
        with trio.fail_after(DEADLINE):
            async with run_cluster(1) as cluster:
                relay = cluster.urls["n1"]
                alice, bob = await init(a, "alice", relay), await init(b, "bob", relay)
                carol, dave = await init(c, "carol", relay), await init(d, "dave", relay)
                await wa(a, "contacts", "add", "bob", bob["user_id"])
                daemon = await Running.start(b, "--json", "daemon")
                assert "socket" in await daemon.json()

                # identity (read-only, beside the daemon)
                assert (await one(b, "id"))["user_id"] == bob["user_id"]
                safety = await one(b, "verify", alice["user_id"])
                assert safety["user_id"] == alice["user_id"]
                assert len(safety["safety_number"].split()) == 12

                # contacts
                assert await one(b, "contacts", "add", "al", alice["user_id"]) == {
                    "name": "al", "user_id": alice["user_id"]}
                dup = await wa(b, "--json", "contacts", "add", "al", carol["user_id"],
                               check=False)
                assert dup.returncode == 1 and "already exists" in dup.stderr.decode()
                assert await one(b, "contacts", "list") == {"name": "al",
                                                             "user_id": alice["user_id"]}
                assert await one(b, "contacts", "block", "al") == {
                    "user_id": alice["user_id"], "blocked": True}
                assert (await one(b, "contacts", "blocked"))["user_id"] == alice["user_id"]
                assert (await one(b, "contacts", "unblock", "al"))["blocked"] is False
                assert lines(await wa(b, "--json", "contacts", "blocked")) == []
                bad = await wa(b, "--json", "contacts", "remove", "nobody", check=False)
                assert bad.returncode == 2
                (err,) = lines(bad)
                assert err["error"]["code"] == "usage"
                assert "unknown contact 'nobody'" in err["error"]["message"]

                # settings
                shown = await one(b, "settings", "--receipts", "on", "--requests", "hold")
                assert (shown["receipts"], shown["requests"]) == ("on", "hold")
                assert (await one(b, "settings"))["receipts"] == "on"

                # messages: alice's reaches the daemon; bob answers through it
                await wa(a, "send", "bob", "hi bob")
                rows = await history_until(b, lambda r: any(x.get("text") == "hi bob"
                                                            for x in r))
                hi = next(x for x in rows if x.get("text") == "hi bob")
                reacted = await one(b, "react", hi["id"][:8], "👍")
                assert (reacted["target"], reacted["reaction"]) == (hi["id"], "👍")
                assert reacted["status"] == "stored"
                sent = await one(b, "send", "al", "mine")
                edited = await one(b, "edit", sent["id"], "mine, edited")
                assert (edited["target"], edited["status"]) == (sent["id"], "stored")
                assert (await one(b, "read", "al"))["read"] == [hi["id"]]
                typing = await one(b, "typing", "al")
                assert (typing["to"], typing["typing"]) == (alice["user_id"], True)
                timer = await one(b, "disappear", "al", "3600")
                assert (timer["expires_in"], timer["status"]) == (3600, "stored")
                assert (await one(b, "disappear", "al", "0"))["expires_in"] == 0
                again = await one(b, "send", "--retry", sent["id"])
                assert (again["id"], again["to"]) == (sent["id"], alice["user_id"])
                deleted = await one(b, "delete", sent["id"])
                assert deleted["target"] == sent["id"]
                unknown = await wa(b, "react", "0" * 32, "x", check=False)
                assert unknown.returncode == 2
                mine = await history_until(b, lambda r: any(x["id"] == sent["id"]
                                                            and x.get("deleted") for x in r))
                assert next(x for x in mine if x["id"] == hi["id"])["reactions"] == {
                    bob["user_id"]: "👍"}
                got = lines(await wa(a, "--json", "recv", "--timeout", "0.5"))
                kinds = [g["type"] for g in got if g.get("from") == bob["user_id"]]
                for kind in ("reaction", "text", "edit", "delete"):
                    assert kind in kinds, kinds
                assert lines(await wa(b, "--json", "outbox")) == []

                # message requests: held while the daemon runs, accepted or declined through it
                await wa(c, "send", bob["user_id"], "hello from carol")
                await wa(d, "send", bob["user_id"], "hello from dave")
                waiting = {r["from"]: r for r in await listed_until(b, ("requests",), 2)}
                assert waiting[carol["user_id"]]["messages"] == 1
                accepted = lines(await wa(b, "--json", "requests", "accept",
                                          carol["user_id"][:10], "--name", "carol"))
                assert [r["text"] for r in accepted] == ["hello from carol"]
                declined = await one(b, "requests", "decline", dave["user_id"], "--block")
                assert (declined["declined"], declined["blocked"], declined["removed"]) == (
                    True, True, 1)
                assert lines(await wa(b, "--json", "requests")) == []
                assert (await one(b, "contacts", "blocked"))["user_id"] == dave["user_id"]

                # groups
                made = await one(b, "group", "create", "team", "al", "carol")
                assert made["admin"] is True
                renamed = await one(b, "group", "rename", "team", "crew")
                assert renamed["group"] == "crew"
                promoted = await one(b, "group", "promote", "crew", "al")
                assert [m["admin"] for m in promoted["members"]
                        if m["user_id"] == alice["user_id"]] == [True]
                assert (await one(b, "group", "list"))["group"] == "crew"
                assert (await one(b, "group", "info", "crew"))["version"] == promoted["version"]
                left = await one(b, "group", "leave", "crew")
                assert left["member"] is False

                # history and export (read-only, beside the daemon)
                out = tmp_path / "export.json"
                assert (await one(b, "history", "--export", str(out)))["exported"] >= 3
                doc = json.loads(out.read_text())
                assert doc["user_id"] == bob["user_id"]
                assert "hello from carol" in [m.get("text") for m in doc["messages"]]

                # devices: list, link one, remove it
                (listed,) = lines(await wa(b, "--json", "devices", "list"))
                assert listed["this_device"] is True
                link = await Running.start(tmp_path / "new", "--json", "link", "--relay", relay,
                                           "--name", "laptop")
                code = (await link.json())["code"]
                approved = await one(b, "devices", "approve", code, "--yes")
                assert approved["name"] == "laptop"
                assert (await link.finish())[0] == 0
                ids = [r["device_id"] for r in lines(await wa(b, "--json", "devices", "list"))]
                assert ids == [0, approved["device_id"]]
                removed = await one(b, "devices", "remove", str(approved["device_id"]), "--yes")
                assert removed["removed"] == approved["device_id"]
                ids = [r["device_id"] for r in lines(await wa(b, "--json", "devices", "list"))]
                assert ids == [0]

                # contacts remove, last (alice is a request again afterwards)
                assert (await one(b, "contacts", "remove", "al"))["removed"] is True
                code, err = await daemon.stop()
                assert code == 0 and "Traceback" not in err, err
    finally:
        for proc in (daemon, link):
            if proc is not None:
                await proc.aclose()
