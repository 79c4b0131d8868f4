"""The ``wa-relay`` command line: init-cluster, config errors, and a real cluster process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import trio
from click.testing import CliRunner
from relay_harness import device_homed_at, publish, session

from relay.__main__ import main
from relay.config import load_cluster
from relay.protocol.frames import Deliver, Send, Sent, Sync
from relay.ring import Ring
from relay.testing import free_base_port


def test_init_cluster_command(tmp_path) -> None:
    result = CliRunner().invoke(main, ["init-cluster", "--nodes", "2", "--base-port", "7800",
                                       "--data", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert result.output.split() == [str(tmp_path / "n1" / "node.toml"),
                                     str(tmp_path / "n2" / "node.toml")]
    assert [n.url for n in load_cluster(tmp_path / "cluster.toml")] == [
        "ws://127.0.0.1:7800", "ws://127.0.0.1:7801"]


def test_config_errors_exit_2(tmp_path) -> None:
    runner = CliRunner()
    result = runner.invoke(main, ["serve", "--config", str(tmp_path / "missing.toml")])
    assert result.exit_code == 2 and "file not found" in result.output
    (tmp_path / "bad.toml").write_text("id = 3\n")
    result = runner.invoke(main, ["serve", "--config", str(tmp_path / "bad.toml")])
    assert result.exit_code == 2 and "'id' must be a non-empty string" in result.output
    result = runner.invoke(main, ["cluster", "--nodes", "0", "--base-port", "1", "--data", "x"])
    assert result.exit_code == 2


async def _start_cluster(data, base_port: int, nodes: int) -> tuple[trio.Process, list[str]]:
    proc = await trio.lowlevel.open_process(
        [sys.executable, "-m", "relay", "cluster", "--nodes", str(nodes), "--base-port",
         str(base_port), "--data", str(data)],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
    )
    lines: list[str] = []
    buf = b""
    while len(lines) < nodes:
        chunk = await proc.stdout.receive_some()
        assert chunk, "the cluster exited before it was ready"
        buf += chunk
        *done, buf = buf.split(b"\n")
        lines += [d.decode() for d in done]
    return proc, lines


async def _stop(proc: trio.Process) -> int:
    proc.send_signal(signal.SIGTERM)
    await proc.wait()
    await proc.stdout.aclose()
    return proc.returncode


async def test_cluster_process_resumes_on_the_same_data(tmp_path) -> None:
    with trio.fail_after(40):
        port = free_base_port(2)
        proc, lines = await _start_cluster(tmp_path, port, 2)
        try:
            assert lines == [f"ready n1 ws://127.0.0.1:{port}", f"ready n2 ws://127.0.0.1:{port + 1}"]
            ring = Ring(load_cluster(tmp_path / "cluster.toml"))
            alice, bob = device_homed_at(ring, "n1"), device_homed_at(ring, "n2")
            await publish(ring.node("n1").url, alice)
            await publish(ring.node("n2").url, bob)
            mid = os.urandom(16)
            async with session(ring.node("n1").url, alice) as a:
                sent = await a.request(Send(id=2, msg_id=mid, recipients=[bob.recipient(b"c")]))
                assert sent == Sent(id=2, status="stored")
        finally:
            assert await _stop(proc) == 0
        assert (tmp_path / "n1" / "node.log").read_text().count("listening") == 1
        proc, _ = await _start_cluster(tmp_path, port, 2)
        try:
            async with session(ring.node("n2").url, bob) as b:
                await b.send(Sync(id=2))
                frame = await b.recv()
                assert isinstance(frame, Deliver) and frame.envelope.msg_id == mid
        finally:
            assert await _stop(proc) == 0
        for node in ("n1", "n2"):  # no bodies or keys in the logs
            log = (tmp_path / node / "node.log").read_bytes()
            assert b"listening" in log
            assert alice.user_id.encode() not in log and bob.user_id.encode() not in log
