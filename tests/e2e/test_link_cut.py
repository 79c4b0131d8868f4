"""A cut right after ``put_devices`` during ``wa-cli devices approve`` leaves no device in
the account's list that cannot receive, and sends to the account keep working
(issue 15, item 12; cli/devices.py).

The primary talks to the node through :class:`.proxy.AnswerCutter`, which loses the
answer to its ``put_devices``: the node has stored the list with the new device,
the approving process does not know it.
"""

from __future__ import annotations

import signal
import subprocess
import uuid
from urllib.parse import urlparse

from .devices import CLI_TIMEOUT, Device, make_device
from .procs import subprocess_env, tool
from .proxy import AnswerCutter


def _accounts(cluster, tmp_path, proxy_url: str) -> tuple[Device, Device]:
    alice = Device(home=tmp_path / "devices" / "alice")
    alice.init("alice", proxy_url)  # the primary reaches its home through the proxy
    bob = make_device(cluster, tmp_path, "bob")
    alice.add_contact("bob", bob.user_id)
    bob.add_contact("alice", alice.user_id)
    return alice, bob


def _proxy(cluster) -> AnswerCutter:
    node = cluster.node("n1")
    return AnswerCutter(node.port, urlparse(node.url).path or "/")


def _texts(lines: list[dict]) -> list[str]:
    return [m["text"] for m in lines if m.get("type") == "text"]


def _sends_work(alice: Device, bob: Device) -> None:
    """Both directions deliver, and alice's list holds only her primary."""
    assert [d["device_id"] for d in alice.devices()] == [0]
    text = f"after the cut {uuid.uuid4().hex}"
    run = bob.run("send", "alice", text)
    assert "skipped" not in run.stderr.decode()
    assert _texts(alice.recv()) == [text]
    back = f"back {uuid.uuid4().hex}"
    alice.send("bob", back)
    assert _texts(bob.recv()) == [back]


def test_answer_lost_after_put_devices_withdraws_the_device_at_once(plain_single_node, tmp_path):
    with _proxy(plain_single_node) as proxy:
        alice, bob = _accounts(plain_single_node, tmp_path, proxy.url)
        link = Device(home=tmp_path / "devices" / "tablet").start_link(
            "tablet", plain_single_node.url("n1"))
        proxy.arm("put_devices", "cut")
        run = alice.run("devices", "approve", link.code, "--yes", check=False)
        err = run.stderr.decode()
        assert proxy.fired.is_set()
        assert run.returncode == 1, err
        assert "linking device 1 (tablet) failed" in err
        assert "withdrawn from the account again" in err
        link.proc.kill()
        link.finish_raw()
        _sends_work(alice, bob)


def test_approver_killed_after_put_devices_the_next_command_withdraws(plain_single_node, tmp_path):
    with _proxy(plain_single_node) as proxy:
        alice, bob = _accounts(plain_single_node, tmp_path, proxy.url)
        link = Device(home=tmp_path / "devices" / "tablet").start_link(
            "tablet", plain_single_node.url("n1"))
        proxy.arm("put_devices", "hold")
        approve = subprocess.Popen(
            [*tool("wa-cli"), "--home", str(alice.home), "--json", "devices", "approve",
             link.code, "--yes"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL, env=subprocess_env())
        try:
            assert proxy.fired.wait(CLI_TIMEOUT), "approve sent no put_devices"
        finally:
            approve.kill()
            assert approve.wait(CLI_TIMEOUT) == -signal.SIGKILL
        link.proc.kill()
        link.finish_raw()

        # The node now lists device 1, which never got its material nor uploaded keys:
        # a contact's send skips it with a warning naming it, and is delivered.
        text = f"while the ghost is listed {uuid.uuid4().hex}"
        run = bob.run("send", "alice", text)
        assert "skipped device 1 (tablet) of alice" in run.stderr.decode()

        # alice's next command withdraws it (the state recorded the link in progress)
        listed = alice.run("devices", "list")
        assert "withdrew device 1 (tablet)" in listed.stderr.decode()
        assert [d["device_id"] for d in alice.devices()] == [0]
        assert _texts(alice.recv()) == [text]
        _sends_work(alice, bob)
