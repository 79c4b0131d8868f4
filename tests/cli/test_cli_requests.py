"""Message requests through real ``wa-cli`` processes against in-process relay nodes:
a stranger's held messages stay off a newly linked device's history, adding the
stranger as a contact accepts the request, and accepting one sends the stranger the
delivery receipts held back meanwhile (never a read receipt)."""

from __future__ import annotations

import json

import cli_procs
import trio
from cli_cluster import run_cluster

from cli.client import open_client
from cli.features.linking import link_device
from cli.session.state import open_state

DEADLINE = 60


async def wa(home, *args) -> list[dict]:
    """``wa-cli --home HOME --json ARGS`` (must exit 0); its JSON lines."""
    proc = await cli_procs.wa(home, "--json", *args)
    return [json.loads(line) for line in proc.stdout.decode().splitlines() if line.strip()]


async def recv(home) -> list[dict]:
    return [m for m in await wa(home, "recv", "--timeout", "0.3")
            if m.get("type") != "devices_changed"]


async def users(tmp_path, cluster, *names):
    """``init`` each name (home ``tmp_path/name``); ``{name: (home, user_id)}``."""
    out = {}
    async with trio.open_nursery() as nursery:
        async def one(i, name):
            (made,) = await wa(tmp_path / name, "init", "--trust-on-first-use", "--name", name,
                               "--relay", cluster.urls[f"n{i % 2 + 1}"])
            out[name] = (tmp_path / name, made["user_id"])
        for i, name in enumerate(names):
            nursery.start_soon(one, i, name)
    return out


async def held_from_dave(u) -> list[str]:
    """dave (a stranger) sends bob two messages; bob's ``recv`` holds them: their ids."""
    bob_id = u["bob"][1]
    ids = [(await wa(u["dave"][0], "send", bob_id, text))[0]["id"] for text in ("hi", "bob?")]
    got = await recv(u["bob"][0])
    assert [(m["type"], m["key"], m["id"]) for m in got] == [
        ("request", u["dave"][1], i) for i in ids]
    return ids


async def test_history_sync_to_a_linked_device_leaves_held_requests_out(tmp_path):
    with trio.fail_after(DEADLINE):
        async with run_cluster(2) as cluster:
            u = await users(tmp_path, cluster, "bob", "dave", "carol")
            await held_from_dave(u)
            (mine,) = await wa(u["bob"][0], "send", u["carol"][1], "to carol")
            assert [r["id"] for r in await wa(u["bob"][0], "history")] == [mine["id"]]
            with open_state(u["bob"][0]) as state:
                async with open_client(state) as client:
                    await link_device(client, tmp_path / "laptop", "laptop", history=True)
            assert [r["id"] for r in await wa(tmp_path / "laptop", "history")] == [mine["id"]]
            (waiting,) = await wa(u["bob"][0], "requests")  # still waits on bob's phone
            assert (waiting["key"], waiting["messages"]) == (u["dave"][1], 2)


async def test_accepting_a_request_sends_the_held_delivery_receipts(tmp_path):
    with trio.fail_after(DEADLINE):
        async with run_cluster(2) as cluster:
            u = await users(tmp_path, cluster, "bob", "dave")
            ids = await held_from_dave(u)
            assert await recv(u["dave"][0]) == []  # held: no receipt yet
            shown = await wa(u["bob"][0], "requests", "accept", u["dave"][1])
            assert [r["id"] for r in shown] == ids
            got = [m["receipt"] for m in await recv(u["dave"][0]) if m["type"] == "receipt"]
            assert got == [{"status": "delivered", "ids": ids}]  # delivered, not read
            rows = {r["id"]: r for r in await wa(u["dave"][0], "history")}
            assert all(rows[i]["receipt"]["delivered"] == [u["bob"][1]] for i in ids)


async def test_adding_a_contact_accepts_their_request(tmp_path):
    with trio.fail_after(DEADLINE):
        async with run_cluster(2) as cluster:
            u = await users(tmp_path, cluster, "bob", "dave")
            ids = await held_from_dave(u)
            assert await wa(u["bob"][0], "history") == []
            (added,) = await wa(u["bob"][0], "contacts", "add", "dave", u["dave"][1])
            assert added == {"name": "dave", "user_id": u["dave"][1]}
            assert await wa(u["bob"][0], "requests") == []
            rows = await wa(u["bob"][0], "history")
            assert [(r["id"], r["from_name"]) for r in rows] == [(i, "dave") for i in ids]
            got = [m["receipt"] for m in await recv(u["dave"][0]) if m["type"] == "receipt"]
            assert got == [{"status": "delivered", "ids": ids}]
            (later,) = await wa(u["dave"][0], "send", u["bob"][1], "later")
            assert [m["id"] for m in await recv(u["bob"][0])] == [later["id"]]
