"""kill -9 right after a node acknowledged a ``send``; restarted on the same data,
nothing acknowledged is lost or shown twice (DESIGN.md, "Delivery guarantees")."""

from __future__ import annotations

import time
import uuid

from .devices import alice_and_bob, home_node

DELIVERY_DEADLINE = 45.0  # seconds for an outbox retry after a restart


def test_kill9_recipient_home_after_ack(cluster, tmp_path):
    alice, bob = alice_and_bob(cluster, tmp_path)
    bob_home = home_node(cluster, bob)
    text = f"survives kill -9 of bob's home {uuid.uuid4().hex}"

    assert alice.send("bob", text)["status"] == "stored"
    cluster.kill(bob_home)
    cluster.restart(bob_home)

    got = bob.recv(timeout=1.0)
    assert [(m["text"], m["from"], m["direction"]) for m in got] == [(text, alice.user_id, "in")]
    assert bob.recv(timeout=1.0) == []

    # The restarted node keeps serving: a second message, a second kill, same result.
    text2 = f"second after restart {uuid.uuid4().hex}"
    assert alice.send("bob", text2)["status"] == "stored"
    cluster.kill(bob_home)
    cluster.restart(bob_home)
    assert [m["text"] for m in bob.recv(timeout=1.0)] == [text2]
    assert bob.recv(timeout=1.0) == []
    cluster.assert_running()
    cluster.assert_clean_logs()


def test_kill9_sender_home_after_ack(cluster, tmp_path):
    alice, bob = alice_and_bob(cluster, tmp_path)
    alice_home = home_node(cluster, alice)
    texts = [f"before the crash {uuid.uuid4().hex}", f"also before {uuid.uuid4().hex}"]

    assert [alice.send("bob", t)["status"] for t in texts] == ["stored", "stored"]
    cluster.kill(alice_home)
    cluster.restart(alice_home)
    after = f"after the crash {uuid.uuid4().hex}"
    assert alice.send("bob", after)["status"] == "stored"

    got = bob.recv(timeout=1.0)
    assert [m["text"] for m in got] == [*texts, after]
    assert {m["from"] for m in got} == {alice.user_id}
    assert bob.recv(timeout=1.0) == []
    cluster.assert_running()
    cluster.assert_clean_logs()


def test_queued_survives_kill9_of_sender_home(cluster, tmp_path):
    """A ``queued`` answer is an acknowledgement too: the outbox entry must survive
    a kill -9 of the sender's home and be delivered once both nodes are back."""
    alice, bob = alice_and_bob(cluster, tmp_path)
    alice_home, bob_home = home_node(cluster, alice), home_node(cluster, bob)
    warm = f"warm-up {uuid.uuid4().hex}"
    assert alice.send("bob", warm)["status"] == "stored"
    assert [m["text"] for m in bob.recv(timeout=1.0)] == [warm]

    cluster.stop(bob_home)
    queued = f"queued then kill -9 {uuid.uuid4().hex}"
    assert alice.send("bob", queued)["status"] == "queued"
    cluster.kill(alice_home)
    cluster.restart(bob_home)
    cluster.restart(alice_home)

    got = bob.recv_until(1, deadline=time.monotonic() + DELIVERY_DEADLINE)
    assert [m["text"] for m in got] == [queued]
    assert bob.recv(timeout=1.0) == []
    cluster.assert_running()
    cluster.assert_clean_logs()
