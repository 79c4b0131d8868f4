"""Groups end to end: real nodes (``wa-relay serve``) and the ``wa-cli`` binary.

alice (primary + linked laptop) creates a group with bob, carol and dave; every
device gets every group message once (``recv --json`` rows carry ``group`` and
``group_id``); dave is removed and gets nothing afterwards; non-admins and the
companion cannot change the group; a message to a member whose home is down is
queued and arrives after the restart; no relay file holds a plaintext marker."""

from __future__ import annotations

import time
import uuid

from .devices import Device, home_node, make_device
from .procs import find_markers

DELIVERY_DEADLINE = 45.0


def texts(rows: list[dict], group: str = "team") -> list[str]:
    return [r["text"] for r in rows if r.get("type") == "text" and r.get("group") == group]


def changes(rows: list[dict]) -> list[dict]:
    return [r for r in rows if r.get("type") == "group_changed"]


def test_group_lifecycle_over_real_nodes(cluster, tmp_path):
    alice = make_device(cluster, tmp_path, "alice")
    bob = make_device(cluster, tmp_path, "bob", not_on=[home_node(cluster, alice)])
    carol = make_device(cluster, tmp_path, "carol")
    dave = make_device(cluster, tmp_path, "dave")
    laptop = Device(home=tmp_path / "devices" / "alice-laptop")
    link = laptop.start_link("laptop", alice.home_url)
    alice.approve(link.code, "--no-history")
    assert link.finish()["user_id"] == alice.user_id
    for name, dev in (("bob", bob), ("carol", carol), ("dave", dave)):
        alice.add_contact(name, dev.user_id)
    bob.add_contact("alice", alice.user_id)
    for dev in (carol, dave):  # alice's invitation is not a message request for them
        dev.add_contact("alice", alice.user_id)
    markers = [f"GROUP-MARKER-{i}-{uuid.uuid4().hex}" for i in range(4)]

    made = alice.json_one("group", "create", "team", "bob", "carol", dave.user_id)
    assert made["group"] == "team" and made["version"] == 1 and made["admin"] is True
    assert {m["user_id"] for m in made["members"]} == {
        alice.user_id, bob.user_id, carol.user_id, dave.user_id}
    assert [m["admin"] for m in made["members"] if m["user_id"] == alice.user_id] == [True]
    for dev in (bob, carol, dave, laptop):
        (change,) = changes(dev.recv())
        assert (change["group"], change["group_id"], change["by"]) == (
            "team", made["group_id"], alice.user_id)

    sent = alice.json_one("send", "--group", "team", f"hello {markers[0]}")
    assert sent["status"] == "stored" and sent["group_id"] == made["group_id"]
    from_bob = bob.json_one("send", "--group", made["group_id"][:12], f"hi {markers[1]}")
    for dev, expect in ((bob, [f"hello {markers[0]}"]),
                        (carol, [f"hello {markers[0]}", f"hi {markers[1]}"]),
                        (dave, [f"hello {markers[0]}", f"hi {markers[1]}"]),
                        (laptop, [f"hello {markers[0]}", f"hi {markers[1]}"]),
                        (alice, [f"hi {markers[1]}"])):
        rows = dev.recv()
        assert texts(rows) == expect, dev.home
        for row in rows:
            if row.get("type") == "text":
                assert row["group_id"] == made["group_id"] and row["id"] in (
                    sent["id"], from_bob["id"])
        assert texts(dev.recv()) == []  # exactly once

    # only an admin's primary device can change the group
    refused = bob.run("group", "add", "team", "alice", check=False)
    assert refused.returncode == 1 and b"not an admin" in refused.stderr
    refused = laptop.run("group", "remove", "team", bob.user_id, check=False)
    assert refused.returncode == 1 and b"primary" in refused.stderr

    removed = alice.json_one("group", "remove", "team", "dave")
    assert removed["version"] == 2 and dave.user_id not in {m["user_id"] for m in removed["members"]}
    (left,) = changes(dave.recv())
    assert left["left"] is True and left["removed"] == [dave.user_id]
    for dev in (bob, carol):
        assert changes(dev.recv())[0]["removed"] == [dave.user_id]
    assert alice.json_one("send", "--group", "team", f"after {markers[2]}")["status"] == "stored"
    assert texts(dave.recv()) == []
    info = dave.json_one("group", "info", "team")
    assert info["member"] is False and info["version"] == 2
    (listed,) = alice.json_lines("group", "list")
    assert (listed["group"], listed["members"], listed["role"]) == ("team", 3, "admin")

    # a member's home is down: the group send is queued, delivered after the restart
    bob_home = home_node(cluster, bob)  # not alice's home (make_device above)
    cluster.stop(bob_home)
    down = alice.json_one("send", "--group", "team", f"while down {markers[3]}")
    assert down["status"] == "queued"
    while_pending = find_markers(cluster.relay_files(), markers)
    assert while_pending == {}, f"plaintext found while pending: {while_pending}"
    cluster.restart(bob_home)
    got: list[dict] = []
    deadline = time.monotonic() + DELIVERY_DEADLINE
    while len(texts(got)) < 2 and time.monotonic() < deadline:
        got += bob.recv_until(1, deadline=deadline)
    assert texts(got) == [f"after {markers[2]}", f"while down {markers[3]}"]
    cluster.close()
    cluster.assert_clean_logs()
    found = find_markers(list(cluster.relay_files()), markers)
    assert found == {}, f"plaintext found in relay files: {found}"
