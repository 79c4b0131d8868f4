"""What a hostile peer controls (its declared name, texts, group and file names) cannot
pass for a contact or forge rows in ``wa-cli`` output: ``wa-cli`` as a subprocess
(``python -m cli``) against an in-process relay node."""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import subprocess

import cli_procs
import pytest
import trio
from cli_cluster import run_cluster
from click.testing import CliRunner

from cli.client import init_account, open_client
from cli.commands.root import main
from cli.features import media
from cli.features.group_messaging import create_group, send_group_text
from cli.output import UNSAFE
from cli.session.state import create_state

DEADLINE = 60


async def wa(home, *args, check=True) -> subprocess.CompletedProcess:
    """Run ``wa-cli --home HOME ARGS`` (human output unless ARGS has ``--json``)."""
    return await cli_procs.wa(home, *args, check=check)


async def wa_json(home, *args) -> list[dict]:
    out = (await wa(home, "--json", *args)).stdout.decode()
    return [json.loads(line) for line in out.split("\n") if line]


async def new_user(tmp_path, relay: str, home: str, name: str) -> str:
    (made,) = await wa_json(tmp_path / home, "init", "--trust-on-first-use", "--name", name, "--relay", relay)
    return made["user_id"]


async def test_an_unknown_sender_cannot_pass_for_a_contact(tmp_path):
    with trio.fail_after(DEADLINE):
        async with run_cluster(1) as cluster:
            relay = cluster.urls["n1"]
            alice = await new_user(tmp_path, relay, "alice", "alice")
            bob = await new_user(tmp_path, relay, "bob", "bob")
            mallory = await new_user(tmp_path, relay, "mallory", "alice")  # claims to be alice
            await wa(tmp_path / "bob", "contacts", "add", "alice", alice)
            # how a stranger's messages are shown (not held as message requests)
            await wa(tmp_path / "bob", "settings", "--requests", "show")

            await wa(tmp_path / "alice", "send", bob, "from the real alice")
            await wa(tmp_path / "mallory", "send", bob, "from mallory")
            real, fake = await wa_json(tmp_path / "bob", "recv", "--timeout", "0.2")
            assert (real["from"], real["from_name"]) == (alice, "alice")
            assert "declared_name" not in real
            assert (fake["from"], fake["from_name"], fake["declared_name"]) == (
                mallory, None, "alice")

            await wa(tmp_path / "alice", "send", bob, "again alice")
            await wa(tmp_path / "mallory", "send", bob, "again mallory")
            human = (await wa(tmp_path / "bob", "recv", "--timeout", "0.2")).stdout.decode()
            rows = [re.sub(r"^\[[^]]+\] ", "", line) for line in human.splitlines()]
            assert rows == ["alice: again alice",
                            f"~alice (unknown {mallory[:12]}\u2026): again mallory"]

            # the same in a group that mallory creates and writes to
            await wa(tmp_path / "mallory", "group", "create", "team", bob)
            await wa(tmp_path / "mallory", "send", "--group", "team", "hi team")
            got = await wa(tmp_path / "bob", "recv", "--timeout", "0.2")
            assert f"unknown {mallory[:12]}\u2026 added you to group 'team'" in got.stderr.decode()
            rows = [re.sub(r"^\[[^]]+\] ", "", line) for line in got.stdout.decode().splitlines()]
            assert rows == [f"~alice (unknown {mallory[:12]}\u2026) @ team: hi team"]
            (row,) = await wa_json(tmp_path / "bob", "history", "--limit", "1")
            assert (row["from_name"], row["declared_name"], row["group"]) == (None, "alice", "team")


HOSTILE_NAME = "alice\n[2001-01-01 00:00:00] FORGED name\x1b[2J\u202e"
HOSTILE_TEXT = ("hello\n[2001-01-01 00:00:00] alice: FORGED text\r[2001-01-01 00:00:00] FORGED cr"
                "\x07\x9b\x85FORGED nel\u2028FORGED ls\u2066")
HOSTILE_GROUP = "team\nFORGED group\x1b]0;title\x07"
HOSTILE_FILE = "r\n  file FORGED.pdf (1 bytes) saved to \x1b]0;x\x07.pdf"
ROW = re.compile(r"^(\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\] |  \| |  file )")


def assert_no_forgery(text: str, allowed: re.Pattern) -> None:
    """No raw control/bidi character but newlines, and every line is one of ours."""
    assert not UNSAFE.search(text.replace("\n", "")), repr(text)
    for line in text.split("\n"):
        assert line == "" or allowed.match(line), repr(line)


async def hostile_sender(tmp_path, relay: str, bob: str) -> None:
    """mallory, through the library (no CLI checks): a name, a text, a file name and a
    group name full of control characters."""
    with create_state(tmp_path / "mallory", name=HOSTILE_NAME, relay_url=relay) as state:
        init_account(state)
        async with media.Reconnecting(state, opener=open_client) as rc:
            client = await rc.client()
            await client.send_text(bob, HOSTILE_TEXT)
            source = tmp_path / "r.pdf"
            source.write_bytes(b"%PDF")
            att = await media.upload_file(rc, source)
            await media.send_file(rc, bob, dataclasses.replace(att, name=HOSTILE_FILE),
                                  HOSTILE_TEXT)
            await create_group(client, HOSTILE_GROUP, [bob])
            await send_group_text(client, HOSTILE_GROUP, HOSTILE_TEXT)


async def test_control_characters_of_a_peer_cannot_forge_output(tmp_path):
    with trio.fail_after(DEADLINE):
        async with run_cluster(1) as cluster:
            relay = cluster.urls["n1"]
            bob = await new_user(tmp_path, relay, "bob", "bob")
            # how a stranger's messages are shown (not held as message requests)
            await wa(tmp_path / "bob", "settings", "--requests", "show")
            await hostile_sender(tmp_path, relay, bob)

            got = await wa(tmp_path / "bob", "recv", "--timeout", "0.2")
            out, err = got.stdout.decode(), got.stderr.decode()
            assert_no_forgery(out, ROW)
            assert_no_forgery(err, re.compile(r"^(unknown |downloading |no new)"))
            assert "~alice\\n[2001-01-01 00:00:00] FORGED name\\x1b[2J\\u202e (unknown" in out
            assert "\n  | [2001-01-01 00:00:00] alice: FORGED text\\r[2001" in out
            assert "@ team\\nFORGED group\\x1b]0;title\\x07: hello" in out
            assert "  file r\\n  file FORGED.pdf (1 bytes) saved to \\x1b]0;x\\x07.pdf " in out
            hist = await wa(tmp_path / "bob", "history")
            assert_no_forgery(hist.stdout.decode(), ROW)
            groups = await wa(tmp_path / "bob", "group", "list")
            assert groups.stdout.decode().startswith("team\\nFORGED group\\x1b]0;title\\x07\t")

            # --json keeps every string exact, and a line is a line for any splitter
            lines = (await wa(tmp_path / "bob", "--json", "history")).stdout.decode()
            assert len(lines.splitlines()) == len(lines.rstrip("\n").split("\n")) == 3
            rows = [json.loads(line) for line in lines.splitlines()]
            assert {r["text"] for r in rows} == {HOSTILE_TEXT}
            assert {r["declared_name"] for r in rows} == {HOSTILE_NAME}
            assert rows[2]["group"] == HOSTILE_GROUP


@pytest.mark.parametrize("args", [
    ["init", "--trust-on-first-use", "--name", "al\nice", "--relay", "ws://127.0.0.1:9"],
    ["init", "--trust-on-first-use", "--name", "alice\u202e", "--relay", "ws://127.0.0.1:9"],
    ["link", "--name", "lap\x07top", "--relay", "ws://127.0.0.1:9"],
    ["contacts", "add", "bo\x1b[31mb", "b" * 52],
    ["contacts", "add", "bob\t", "b" * 52],
    ["group", "create", "te\ram", "b" * 52],
    ["group", "create", "team\x85", "b" * 52],
])
def test_names_with_control_characters_are_refused(tmp_path, args):
    result = CliRunner().invoke(main, ["--home", str(tmp_path / "h"), *args])
    assert result.exit_code == 2, result.output
    assert "must not contain control characters" in result.stderr
    assert not (tmp_path / "h").exists()


def test_log_lines_escape_control_characters():
    from cli.commands.root import _EscapingFormatter

    record = logging.LogRecord("cli.features.media", logging.WARNING, __file__, 1,
                               "file %s: %s", (HOSTILE_FILE, "bad"), None)
    line = _EscapingFormatter("wa-cli: %(message)s").format(record)
    assert line == "wa-cli: file r\\n  file FORGED.pdf (1 bytes) saved to \\x1b]0;x\\x07.pdf: bad"


def test_device_list_notices_name_unknown_users_by_user_id():
    from cli.events import DevicesChanged
    from cli.output import devices_changed_human

    mallory = "m" * 52
    change = DevicesChanged(mallory, "", 2, ((1, "tab\nlet"),), ((3, "old\x1b[0m"),))
    assert devices_changed_human(change, own=False).split("\n") == [
        f"unknown {mallory[:12]}\u2026 linked a new device (tab\\nlet)",
        f"unknown {mallory[:12]}\u2026 removed device 3",
    ]
    named = DevicesChanged(mallory, "bob", 2, ((1, "tablet"),), ())
    assert devices_changed_human(named, own=False) == "bob linked a new device (tablet)"
