"""``wa-cli`` as a subprocess (``python -m cli``) against in-process relay nodes:
the CLI contract's JSON for init, id, contacts, send and recv."""

from __future__ import annotations

import json
import subprocess
import sys

import cli_procs
import trio
from cli_cluster import run_cluster

DEADLINE = 60


async def wa(home, *args, check=True):
    """Run ``wa-cli --home HOME --json ARGS``; returns the completed process."""
    return await cli_procs.wa(home, "--json", *args, check=check)


def lines(proc) -> list[dict]:
    return [json.loads(line) for line in proc.stdout.decode().splitlines() if line.strip()]


async def test_cli_send_and_recv_contract(tmp_path):
    with trio.fail_after(DEADLINE):
        async with run_cluster(3) as cluster:
            relay = cluster.urls["n1"]
            (alice,) = lines(await wa(tmp_path / "a", "init", "--trust-on-first-use", "--name", "alice", "--relay", relay))
            (bob,) = lines(await wa(tmp_path / "b", "init", "--trust-on-first-use", "--name", "bob", "--relay", relay))
            assert set(alice) == {"user_id", "device_id", "home"}
            assert alice["home"] == cluster.urls[cluster.home_of(alice["user_id"])]
            assert alice["device_id"] == 0
            (ident,) = lines(await wa(tmp_path / "b", "id"))
            assert ident["user_id"] == bob["user_id"] and ident["home"] == bob["home"]
            assert ident["name"] == "bob"

            await wa(tmp_path / "a", "contacts", "add", "bob", bob["user_id"])
            # this contract is that of a stranger's message shown as it comes (message
            # requests, on by default, would hold it: test_cli_basics covers them)
            (shown,) = lines(await wa(tmp_path / "b", "settings", "--requests", "show"))
            assert shown["requests"] == "show"
            sent = [lines(await wa(tmp_path / "a", "send", "bob", t))[0] for t in ("x", "y ✓")]
            assert [s["status"] for s in sent] == ["stored", "stored"]
            assert all(s["to"] == bob["user_id"] and len(s["id"]) == 32 for s in sent)
            by_id = lines(await wa(tmp_path / "a", "send", bob["user_id"], "z"))[0]

            got = lines(await wa(tmp_path / "b", "recv", "--timeout", "0.2"))
            assert [m["text"] for m in got] == ["x", "y ✓", "z"]
            assert [m["id"] for m in got] == [s["id"] for s in sent] + [by_id["id"]]
            for m in got:  # alice is not bob's contact: her name is only declared
                assert set(m) == {"id", "from", "from_name", "declared_name", "from_device",
                                  "direction", "ts", "type", "text"}
                assert (m["from"], m["from_name"], m["declared_name"], m["from_device"],
                        m["direction"], m["type"]) == (alice["user_id"], None, "alice", 0, "in",
                                                       "text")
                assert isinstance(m["ts"], int)
            assert lines(await wa(tmp_path / "b", "recv", "--timeout", "0.2")) == []

            await wa(tmp_path / "b", "contacts", "add", "al", alice["user_id"])
            await wa(tmp_path / "a", "send", "bob", "again")
            (m,) = lines(await wa(tmp_path / "b", "recv", "--timeout", "0.2"))
            assert m["from_name"] == "al"  # the local alias wins over the declared name
            # bob's device told alice's that each message was delivered (receipts are on)
            receipts = lines(await wa(tmp_path / "a", "recv", "--timeout", "0.2"))
            assert {r["type"] for r in receipts} == {"receipt"}
            delivered = [i for r in receipts for i in r["receipt"]["ids"]]
            assert sorted(delivered) == sorted([s["id"] for s in sent] + [by_id["id"], m["id"]])
            human = await wa(tmp_path / "a", "--help", check=False)
            assert human.returncode == 0


async def test_recv_follow_prints_live_messages(tmp_path):
    with trio.fail_after(DEADLINE):
        async with run_cluster(2) as cluster:
            relay = cluster.urls["n1"]
            (bob,) = lines(await wa(tmp_path / "b", "init", "--trust-on-first-use", "--name", "bob", "--relay", relay))
            (alice,) = lines(await wa(tmp_path / "a", "init", "--trust-on-first-use", "--name", "alice",
                                      "--relay", relay))
            await wa(tmp_path / "b", "contacts", "add", "al", alice["user_id"])  # not a request
            proc = await trio.lowlevel.open_process(
                [sys.executable, "-m", "cli", "--home", str(tmp_path / "b"), "recv", "--follow",
                 "--json"],
                stdout=subprocess.PIPE, stdin=subprocess.DEVNULL,
            )
            try:
                await wa(tmp_path / "a", "send", bob["user_id"], "live one")
                buf = b""
                while b"\n" not in buf:
                    chunk = await proc.stdout.receive_some()
                    assert chunk, "recv --follow exited early"
                    buf += chunk
                msg = json.loads(buf.split(b"\n")[0])
                assert (msg["text"], msg["from_name"], msg["direction"]) == (
                    "live one", "al", "in")
            finally:
                proc.terminate()
                await proc.wait()
                await proc.stdout.aclose()
