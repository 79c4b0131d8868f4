"""Abuse resistance end to end (issue 11), with real ``wa-relay serve`` and ``wa-cli``
processes: a node that registers by invite (``wa-relay admin invite``, ``wa-cli init
--invite``), and files that ``wa-cli recv`` does not download by itself (from a
non-contact, or above ``--auto-download``)."""

from __future__ import annotations

import json
import os
import subprocess

from .devices import Device, make_device
from .procs import subprocess_env, tool


def _set_registration(cluster, node_id: str, policy: str) -> None:
    config = cluster.node(node_id).config
    text = config.read_text()
    assert 'registration = "open"' in text
    config.write_text(text.replace('registration = "open"', f'registration = "{policy}"'))


def test_an_invite_node_refuses_an_account_without_a_token_and_accepts_one_with(
        single_node, tmp_path) -> None:
    cluster = single_node
    cluster.stop("n1")
    _set_registration(cluster, "n1", "invite")
    cluster.start("n1")
    url = cluster.url("n1")
    stranger = Device(home=tmp_path / "stranger")
    run = stranger.run("init", "--name", "stranger", "--relay", url, "--trust-on-first-use",
                         check=False)
    assert run.returncode == 1
    err = run.stderr.decode()
    assert "unauthorized" in err and "limit registration" in err, err
    issued = subprocess.run(
        [*tool("wa-relay"), "admin", "invite", "--config", str(cluster.node("n1").config),
         "--count", "2", "--json"], capture_output=True, env=subprocess_env(), timeout=60,
        check=False)
    assert issued.returncode == 0, issued.stderr.decode()
    tokens = [json.loads(line)["invite"] for line in issued.stdout.decode().splitlines()]
    assert len(tokens) == 2 and len(set(tokens)) == 2
    invited = Device(home=tmp_path / "invited")
    out = invited.json_one("init", "--name", "invited", "--relay", url, "--trust-on-first-use",
                          "--invite", tokens[0])
    assert out["user_id"] and out["home"] == url
    again = Device(home=tmp_path / "again")  # a token is used once
    reused = again.run("init", "--name", "again", "--relay", url, "--trust-on-first-use",
                     "--invite", tokens[0],
                       check=False)
    assert reused.returncode == 1 and "unauthorized" in reused.stderr.decode()


def test_a_non_contacts_file_and_a_too_large_one_are_listed_not_downloaded(
        single_node, tmp_path) -> None:
    cluster = single_node
    alice = make_device(cluster, tmp_path, "alice")
    bob = make_device(cluster, tmp_path, "bob")
    alice.add_contact("bob", bob.user_id)  # bob has not added alice
    bob.run("settings", "--requests", "show")  # shown, not held as a message request
    src = tmp_path / "big.bin"
    src.write_bytes(os.urandom(300 * 1024))
    sent = alice.json_lines("send", "bob", "--file", str(src), "from a stranger")[-1]
    assert sent["status"] == "stored"
    downloads = tmp_path / "downloads"
    rows = bob.json_lines("recv", "--timeout", "1", "--downloads", str(downloads))
    [row] = [r for r in rows if r.get("id") == sent["id"]]
    assert row["file"]["path"] is None
    assert row["file"]["held"] == "from someone not in your contacts"
    assert row["file"]["fetch"] == f"wa-cli history {alice.user_id} --download"
    assert "key" not in row["file"]  # the file key stays in the device state
    assert not downloads.exists() or not any(downloads.iterdir())
    # the listed command fetches it
    bob.json_lines("history", alice.user_id, "--download", "--downloads", str(downloads))
    assert [p.read_bytes() for p in downloads.iterdir()] == [src.read_bytes()]
    # a contact's file above --auto-download is listed too
    bob.add_contact("alice", alice.user_id)
    sent = alice.json_lines("send", "bob", "--file", str(src))[-1]
    rows = bob.json_lines("recv", "--timeout", "1", "--downloads", str(tmp_path / "d2"),
                          "--auto-download", "100000")
    [row] = [r for r in rows if r.get("id") == sent["id"]]
    assert row["file"]["path"] is None and "more than the automatic download limit" in row["file"]["held"]
    assert row["file"]["fetch"] == "wa-cli history alice --download"
