"""No plaintext marker appears anywhere a relay writes: LMDB files, node.log,
captured stdout/stderr, while messages sit in queues and outboxes and after
delivery."""

from __future__ import annotations

import json
import time
import uuid

from .devices import alice_and_bob, home_node
from .procs import find_markers

DELIVERY_DEADLINE = 45.0


def test_no_plaintext_marker_in_relay_files(cluster, tmp_path):
    alice, bob = alice_and_bob(cluster, tmp_path)
    bob_home = home_node(cluster, bob)
    markers = [f"PLAINTEXT-MARKER-{i}-{uuid.uuid4().hex}" for i in range(5)]

    # 0: delivered right away (first, pre-key message); 1: delivered, reply from bob;
    # 2: left in bob's queue; 3: left in alice's home's outbox while bob's home is down.
    assert alice.send("bob", f"hello {markers[0]}")["status"] == "stored"
    assert [m["text"] for m in bob.recv(timeout=1.0)] == [f"hello {markers[0]}"]
    reply = bob.send("alice", f"reply {markers[1]}")
    assert reply["status"] == "stored"
    assert [m["text"] for m in alice.recv(timeout=1.0)
            if m.get("type") == "text"] == [f"reply {markers[1]}"]  # and bob's receipt
    assert alice.send("bob", f"queued at home {markers[2]}")["status"] == "stored"
    cluster.stop(bob_home)
    assert alice.send("bob", f"in the outbox {markers[3]}")["status"] == "queued"

    while_pending = find_markers(cluster.relay_files(), markers)
    assert while_pending == {}, f"plaintext found while pending: {while_pending}"

    cluster.restart(bob_home)
    # the two texts, and alice's delivered receipt for the reply (receipts are on)
    got = bob.recv_until(3, deadline=time.monotonic() + DELIVERY_DEADLINE)
    assert [m["text"] for m in got if m["type"] == "text"] == [
        f"queued at home {markers[2]}", f"in the outbox {markers[3]}"]
    assert [m["receipt"] for m in got if m["type"] == "receipt"] == [
        {"status": "delivered", "ids": [reply["id"]]}]
    assert alice.send("bob", f"after restart {markers[4]}")["status"] == "stored"
    last = bob.recv(timeout=1.0)
    assert [m["text"] for m in last] == [f"after restart {markers[4]}"]
    cluster.close()  # flush and release everything before the final scan

    # Positive control: the scanner does find the markers where they must be.
    transcript = tmp_path / "bob-recv.jsonl"
    transcript.write_text("".join(json.dumps(m, ensure_ascii=False) + "\n" for m in got + last))
    assert set(find_markers([transcript], markers)) == set(markers[2:])

    files = list(cluster.relay_files())
    names = {p.name for p in files}
    assert "data.mdb" in names, f"no LMDB file under {cluster.data}: {sorted(names)}"
    for nid in cluster.nodes:
        assert (cluster.data / nid / "node.log").is_file(), f"{nid} wrote no node.log"
    assert sum(p.stat().st_size for p in files) > 0
    cluster.assert_clean_logs()
    found = find_markers(files, markers)
    assert found == {}, f"plaintext found in relay files: {found}"
