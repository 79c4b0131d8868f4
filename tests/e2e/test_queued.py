"""The recipient's home is down at send time: the sender gets ``queued``; when that
node comes back the sender home's outbox delivers the message."""

from __future__ import annotations

import time
import uuid

from .devices import alice_and_bob, home_node

DELIVERY_DEADLINE = 45.0  # seconds: outbox backoff after the home comes back


def test_home_down_gives_queued_then_delivery(cluster, tmp_path):
    alice, bob = alice_and_bob(cluster, tmp_path)
    bob_home = home_node(cluster, bob)

    # alice has messaged bob before: her Olm session and bob's device list are cached.
    warm = f"warm-up {uuid.uuid4().hex}"
    assert alice.send("bob", warm)["status"] == "stored"
    assert [m["text"] for m in bob.recv(timeout=1.0)] == [warm]

    cluster.stop(bob_home)
    texts = [f"while bob's home is down {i} {uuid.uuid4().hex}" for i in range(2)]
    results = [alice.send("bob", t) for t in texts]
    assert [r["status"] for r in results] == ["queued", "queued"]
    cluster.restart(bob_home)

    got = bob.recv_until(len(texts), deadline=time.monotonic() + DELIVERY_DEADLINE)
    assert [m["text"] for m in got] == texts  # in order, once
    assert [m["id"] for m in got] == [r["id"] for r in results]
    assert all(m["from"] == alice.user_id and m["from_name"] == "alice" for m in got)
    assert bob.recv(timeout=1.0) == []
    cluster.assert_running()
    cluster.assert_clean_logs()
