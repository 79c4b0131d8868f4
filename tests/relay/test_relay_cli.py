"""The ``wa-relay`` command line: init-cluster, config errors, and a real cluster process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import nacl.signing
import pytest
import trio
from click.testing import CliRunner
from relay_harness import device_homed_at, publish, session

import relay.__main__ as relay_cli
from relay.__main__ import main
from relay.config import load_cluster
from relay.config.ring import Ring
from relay.protocol.frames import Deliver, Send, Sent, Sync
from relay.testing import free_base_port


def test_init_cluster_command(tmp_path) -> None:
    result = CliRunner().invoke(main, ["init-cluster", "--nodes", "2", "--base-port", "7800",
                                       "--data", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert result.output.split() == [str(tmp_path / "n1" / "node.toml"),
                                     str(tmp_path / "n2" / "node.toml")]
    assert [n.url for n in load_cluster(tmp_path / "cluster.toml")] == [
        "ws://127.0.0.1:7800", "ws://127.0.0.1:7801"]


def _init_args(data, nodes: int, base_port: int, *extra: str) -> list[str]:
    return ["init-cluster", "--nodes", str(nodes), "--base-port", str(base_port),
            "--data", str(data), *extra]


@pytest.mark.parametrize("command", ["init-cluster", "cluster"])
@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--nodes", "2", "--base-port", "7400"], "the queues of n3 are no longer served"),
        (["--nodes", "4", "--base-port", "7400"], "users move to other home nodes"),
        (["--nodes", "3", "--base-port", "7500"], "ws://127.0.0.1:7500"),
        (["--nodes", "3", "--base-port", "7400", "--host", "127.0.0.2"], "ws://127.0.0.2:7400"),
    ],
    ids=["fewer nodes", "more nodes", "other base port", "other host"],
)
def test_other_arguments_do_not_rewrite_an_existing_cluster(
    tmp_path, monkeypatch, command, args, needle
) -> None:
    started = []
    monkeypatch.setattr(relay_cli, "_run", started.append)  # never run nodes here
    runner = CliRunner()
    assert runner.invoke(main, _init_args(tmp_path, 3, 7400)).exit_code == 0
    before = {p: p.read_bytes() for p in sorted(tmp_path.rglob("*")) if p.is_file()}
    result = runner.invoke(main, [command, *args, "--data", str(tmp_path)])
    assert result.exit_code == 2, result.output
    assert "already describes another cluster" in result.output
    assert ("existing:  n1 ws://127.0.0.1:7400, n2 ws://127.0.0.1:7401, n3 ws://127.0.0.1:7402"
            in result.output)
    assert needle in result.output
    assert "--reconfigure" in result.output
    after = {p: p.read_bytes() for p in sorted(tmp_path.rglob("*")) if p.is_file()}
    assert after == before  # nothing written: no new node dir, key or node.toml either
    assert started == []


def test_reconfigure_rewrites_the_cluster(tmp_path) -> None:
    runner = CliRunner()
    assert runner.invoke(main, _init_args(tmp_path, 3, 7400)).exit_code == 0
    keys = [(tmp_path / f"n{i}" / "node.key").read_bytes() for i in (1, 2)]
    result = runner.invoke(main, _init_args(tmp_path, 2, 7410, "--reconfigure"))
    assert result.exit_code == 0, result.output
    cluster = load_cluster(tmp_path / "cluster.toml")
    assert [(n.id, n.url) for n in cluster] == [("n1", "ws://127.0.0.1:7410"),
                                               ("n2", "ws://127.0.0.1:7411")]
    assert [n.public_key for n in cluster] == [
        bytes(nacl.signing.SigningKey(k).verify_key) for k in keys]  # same identities
    assert "port = 7411" in (tmp_path / "n2" / "node.toml").read_text()
    # the same arguments again: accepted without the flag
    assert runner.invoke(main, _init_args(tmp_path, 2, 7410)).exit_code == 0


def test_unreadable_existing_cluster_file_is_refused(tmp_path) -> None:
    (tmp_path / "cluster.toml").write_text("[[node]]\nid = 3\n")
    result = CliRunner().invoke(main, _init_args(tmp_path, 1, 7400))
    assert result.exit_code == 2, result.output
    assert "field 'node[0].id': Expected `str`, got `int`" in result.output
    assert "--reconfigure" in result.output
    assert not (tmp_path / "n1").exists()


def test_config_errors_exit_2(tmp_path) -> None:
    runner = CliRunner()
    result = runner.invoke(main, ["serve", "--config", str(tmp_path / "missing.toml")])
    assert result.exit_code == 2 and "file not found" in result.output
    (tmp_path / "bad.toml").write_text("id = 3\n")
    result = runner.invoke(main, ["serve", "--config", str(tmp_path / "bad.toml")])
    assert result.exit_code == 2 and "field 'id': Expected `str`, got `int`" in result.output
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
        port = free_base_port(4)  # two nodes, two admin listeners
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
                assert isinstance(frame, Deliver) and frame.items[0].envelope.msg_id == mid
        finally:
            assert await _stop(proc) == 0
        for node in ("n1", "n2"):  # no bodies or keys in the logs
            log = (tmp_path / node / "node.log").read_bytes()
            assert b"listening" in log
            assert alice.user_id.encode() not in log and bob.user_id.encode() not in log
