"""Two users on different home nodes: what is sent while the recipient is offline
arrives once, in order, decrypted, and is gone from the queue after a receive."""

from __future__ import annotations

import uuid

from .devices import home_node, make_device


def test_offline_messages_arrive_once_in_order(cluster, tmp_path):
    alice = make_device(cluster, tmp_path, "alice")
    bob = make_device(cluster, tmp_path, "bob", not_on=[home_node(cluster, alice)])
    assert home_node(cluster, alice) != home_node(cluster, bob)
    assert alice.ident()["user_id"] == alice.user_id
    assert bob.ident()["home"].rstrip("/") == bob.home_url.rstrip("/")
    alice.add_contact("bob", bob.user_id)
    bob.add_contact("alice", alice.user_id)

    tag = uuid.uuid4().hex[:8]
    texts = [f"first {tag}", f"second {tag} with ünïcødé ✓", f"third {tag}"]
    sent = [alice.send("bob", text) for text in texts]  # bob runs no recv: offline
    assert [s["status"] for s in sent] == ["stored"] * 3
    assert all(s["to"] in ("bob", bob.user_id) for s in sent), sent
    assert len({s["id"] for s in sent}) == 3

    got = bob.recv(timeout=1.0)
    assert [m["text"] for m in got] == texts
    assert [m["id"] for m in got] == [s["id"] for s in sent]
    for m in got:
        assert m["direction"] == "in"
        assert m["from"] == alice.user_id
        assert m["from_name"] == "alice"
        assert m["from_device"] == alice.device_id
        assert m["type"] == "text"
    assert [m["ts"] for m in got] == sorted(m["ts"] for m in got)

    assert bob.recv(timeout=1.0) == []  # acknowledged: nothing is delivered twice
    cluster.assert_running()
    cluster.assert_clean_logs()
