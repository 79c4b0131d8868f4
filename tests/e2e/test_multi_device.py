"""Multi-device accounts through the real CLI on real nodes (subprocesses): linking a
laptop with ``wa-cli link`` / ``devices approve``, history sync without plaintext on any
relay, both devices getting every message once, safety numbers that do not change
with devices, removal, and clear errors for wrong, reused or expired codes."""

from __future__ import annotations

import json
import os
import uuid

from cli.features.linkcode import LinkCode

from .devices import Device, alice_and_bob, home_node, make_device
from .procs import find_markers


def test_linked_laptop_history_messages_and_removal(cluster, tmp_path):
    alice, bob = alice_and_bob(cluster, tmp_path)
    tag = uuid.uuid4().hex
    markers = [f"HISTORY-MARKER-{i}-{tag}" for i in range(2)] + [f"LIVE-MARKER-{tag}"]
    alice.send("bob", markers[0])
    assert [m["text"] for m in bob.recv()] == [markers[0]]
    bob.send("alice", markers[1])
    safety_before = bob.verify("alice")["safety_number"]
    fingerprint_before = bob.ident()["fingerprint"]

    laptop = Device(home=tmp_path / "devices" / "bob-laptop")
    link = laptop.start_link("laptop", cluster.url(home_node(cluster, alice)))  # any node
    assert link.code.startswith("wa1-")
    approved = bob.approve(link.code)
    assert (approved["device_id"], approved["name"], approved["version"]) == (1, "laptop", 2)
    assert len(approved["fingerprint"].split()) == 8
    assert link.finish() == {"user_id": bob.user_id, "device_id": 1}

    assert [(m["direction"], m["text"]) for m in laptop.history()] == [
        ("in", markers[0]), ("out", markers[1])]
    assert laptop.ident()["fingerprint"] == fingerprint_before == bob.ident()["fingerprint"]
    assert bob.verify("alice")["safety_number"] == safety_before
    assert laptop.verify("alice")["safety_number"] == safety_before
    assert alice.verify("bob")["safety_number"] == safety_before
    rows = bob.devices()
    assert [(r["device_id"], r["name"], r["this_device"]) for r in rows] == [
        (0, "primary", True), (1, "laptop", False)]
    assert rows[1]["fingerprint"] == approved["fingerprint"]

    # alice's cached list is stale: stale_devices; the send reports the change
    changed, sent = alice.send_lines("bob", markers[2])
    assert changed == {"type": "devices_changed", "user_id": bob.user_id, "name": "bob",
                       "version": 2, "added": [{"device_id": 1, "name": "laptop"}],
                       "removed": []}
    assert sent["status"] == "stored"
    for device in (laptop, bob):
        got = [m for m in device.recv() if m.get("type") == "text"]
        assert [(m["text"], m["direction"], m["id"]) for m in got] == [
            (markers[2], "in", sent["id"])]
        assert device.recv() == []
    assert [m for m in alice.recv() if m.get("type") == "devices_changed"] == []  # shown once
    reply = laptop.send("alice", "from the laptop")  # the primary stays offline
    assert reply["status"] == "stored"
    assert [(m["text"], m["from_device"]) for m in alice.recv()] == [("from the laptop", 1)]
    got = bob.recv()
    (own,) = [m for m in got if m.get("type") == "text"]
    assert (own["direction"], own["to"], own["from_device"]) == ("out", alice.user_id, 1)
    # alice's device said it got the laptop's message (receipts are on by default)
    assert {"status": "delivered", "ids": [reply["id"]]} in [
        m["receipt"] for m in got if m.get("type") == "receipt"]

    assert bob.remove_device(1) == {"removed": 1, "version": 3}
    refused = laptop.run("recv", "--timeout", "0.2", check=False)
    assert refused.returncode == 1
    assert b"no longer in the account's device list" in refused.stderr
    alice.send("bob", "after removal")
    assert [m["text"] for m in bob.recv()] == ["after removal"]

    cluster.close()
    assert find_markers(cluster.relay_files(), markers) == {}
    cluster.assert_clean_logs()


def test_wrong_reused_expired_and_malformed_codes(cluster, tmp_path):
    bob = make_device(cluster, tmp_path, "bob")
    url = cluster.url(home_node(cluster, bob))

    def approve_fails(code: str, exit_code: int, json_code: str = "failed") -> str:
        run = bob.run("devices", "approve", code, "--yes", check=False)
        assert run.returncode == exit_code, run.stderr
        error = json.loads(run.stdout)["error"]  # --json: the error on stdout too
        assert error["code"] == ("usage" if exit_code == 2 else json_code)
        assert error["message"] in run.stderr.decode()
        return run.stderr.decode()

    assert "starts with 'wa1-'" in approve_fails("hello", 2)
    assert "malformed" in approve_fails("wa1-aaaaaaaa", 2)

    expired = Device(home=tmp_path / "devices" / "expired").start_link("x", url, timeout=0.5)
    code, out, err = expired.finish_raw()
    assert code == 1 and [json.loads(line)["error"]["code"] for line in out] == ["failed"]
    assert "not approved within 0.5 s" in err
    assert not (expired.device.home / "state.bin").exists()
    assert "wrong, already used or expired; nothing changed" in approve_fails(expired.code, 1)

    link = Device(home=tmp_path / "devices" / "tablet").start_link("tablet", url)
    real = LinkCode.decode(link.code)
    wrong_mailbox = LinkCode(real.node_id, os.urandom(16), real.digest, real.secret).encode()
    assert "wrong, already used or expired; nothing changed" in approve_fails(wrong_mailbox, 1)
    wrong_device = LinkCode(real.node_id, real.mailbox_id, os.urandom(32), real.secret).encode()
    assert "code does not match the device; nothing changed" in approve_fails(wrong_device, 1)
    assert [d["device_id"] for d in bob.devices()] == [0]
    assert bob.approve(link.code)["device_id"] == 1
    link.finish()
    reused = approve_fails(link.code, 1, "link_code_used")  # the node says so (already_used)
    assert "this linking code was already used; run 'wa-cli link' again" in reused
    assert [d["device_id"] for d in bob.devices()] == [0, 1]

    companion = link.device.run("devices", "approve", link.code, "--yes", check=False)
    assert companion.returncode == 1 and b"only the primary device" in companion.stderr
    cluster.assert_clean_logs()
