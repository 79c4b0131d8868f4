"""Operating real ``wa-relay`` processes: ``status --json`` on a local cluster, SIGTERM
(clients see 1001, exit 0, nothing acknowledged lost), ``--log-level`` with a log file,
the file-descriptor warning."""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import time
from pathlib import Path

import trio
from relay_harness import connect, device_homed_at, publish, session

from relay.config import load_cluster
from relay.config.ring import Ring
from relay.net import ConnectionLost
from relay.protocol.frames import Deliver, Send, Sent, Sync
from relay.testing import LoggedProcess, free_base_port, tool


def _cluster(tmp_path: Path, nodes: int, *extra: str, name: str = "cluster",
             base: int | None = None) -> LoggedProcess:
    """``wa-relay [extra] cluster`` on ``tmp_path/data``; ``base``: the base port of an
    existing data dir (default: a free range for the nodes and their admin ports)."""
    base = base or free_base_port(2 * nodes)
    return LoggedProcess(
        [*tool("wa-relay"), *extra, "cluster", "--nodes", str(nodes), "--base-port", str(base),
         "--data", str(tmp_path / "data")],
        stdout_log=tmp_path / f"{name}.out", stderr_log=tmp_path / f"{name}.err", name=name)


async def _ready(proc: LoggedProcess, nodes: int) -> list[tuple[str, str]]:
    out = []
    for _ in range(nodes):
        line = await trio.to_thread.run_sync(proc.next_ready, time.monotonic() + 30)
        assert line is not None, proc.stderr_tail()
        out.append(line)
    return out


async def _stop(proc: LoggedProcess) -> int:
    code, killed = await trio.to_thread.run_sync(proc.stop, 30)
    assert not killed, proc.stderr_tail()
    return code


async def test_status_json_reports_every_node(tmp_path) -> None:
    proc = _cluster(tmp_path, 2)
    try:
        with trio.fail_after(60):
            await _ready(proc, 2)
            run = await trio.run_process(
                [*tool("wa-relay"), "status", "--data", str(tmp_path / "data"), "--json"],
                capture_stdout=True, capture_stderr=True, check=False)
            assert run.returncode == 0, run.stderr
            answers = [json.loads(line) for line in run.stdout.decode().splitlines()]
            ring = Ring(load_cluster(tmp_path / "data" / "cluster.toml"))
            assert [a["id"] for a in answers] == ["n1", "n2"]
            for a, node in zip(answers, ring.nodes, strict=True):
                assert a["url"] == node.url and a["reachable"] and a["ring_matches"]
                assert a["healthy"] is True and a["ready"] is True and a["version"]
                assert a["ring_version"] == ring.version
                assert a["admin_url"].startswith("http://127.0.0.1:")
                assert a["metrics"]["queued"] == 0 and "devices" in a["metrics"]
            text = await trio.run_process(
                [*tool("wa-relay"), "status", "--data", str(tmp_path / "data")],
                capture_stdout=True, check=False)
            assert text.returncode == 0 and text.stdout.decode().count("reachable, healthy") == 2
            one = await trio.run_process(  # a deployment's view: only its own admin URL
                [*tool("wa-relay"), "status", "--config", str(tmp_path / "data" / "n2" / "node.toml"),
                 "--json"], capture_stdout=True, check=False)
            assert one.returncode == 0
            n1, n2 = (json.loads(line) for line in one.stdout.decode().splitlines())
            assert n1["reachable"] and n1["admin_url"] is None and n1["healthy"] is None
            assert n2["reachable"] and n2["healthy"] is True
    finally:
        assert await _stop(proc) == 0
    with trio.fail_after(30):  # every node down: exit 1, both unreachable
        run = await trio.run_process(
            [*tool("wa-relay"), "status", "--data", str(tmp_path / "data"), "--json",
             "--timeout", "2"], capture_stdout=True, check=False)
    assert run.returncode == 1
    assert [json.loads(line)["reachable"] for line in run.stdout.decode().splitlines()] == [
        False, False]


async def test_sigterm_closes_clients_with_1001_and_keeps_what_was_acknowledged(tmp_path) -> None:
    proc = _cluster(tmp_path, 1)
    with trio.fail_after(60):
        [(_, url)] = await _ready(proc, 1)
        ring = Ring(load_cluster(tmp_path / "data" / "cluster.toml"))
        alice, bob = device_homed_at(ring, "n1"), device_homed_at(ring, "n1")
        await publish(url, alice)
        await publish(url, bob)
        mid = os.urandom(16)
        async with session(url, alice) as a, connect(url) as raw:
            await raw.hello()
            sent = await a.request(Send(id=2, msg_id=mid, recipients=[bob.recipient(b"kept")]))
            assert sent == Sent(id=2, status="stored")
            proc.terminate()
            for client in (a, raw):
                try:
                    while True:
                        await client.recv()
                except ConnectionLost:
                    pass
                assert client.close_code == 1001
        assert await trio.to_thread.run_sync(proc.reap, 30) == 0  # no second SIGTERM
        log = (tmp_path / "data" / "n1" / "node.log").read_text()
        assert "stopping: closing 2 connection(s) with 1001" in log
        proc = _cluster(tmp_path, 1, name="again", base=int(url.rsplit(":", 1)[1]))
        try:
            await _ready(proc, 1)
            async with session(url, bob) as b:
                await b.send(Sync(id=2))
                frame = await b.recv()
                assert isinstance(frame, Deliver) and frame.items[0].envelope.msg_id == mid
        finally:
            assert await _stop(proc) == 0


async def test_log_level_debug_reaches_the_log_file(tmp_path) -> None:
    proc = _cluster(tmp_path, 1, "--log-level", "debug")
    with trio.fail_after(60):
        [(_, url)] = await _ready(proc, 1)
        async with connect(url) as raw:
            await raw.hello()
        ring = Ring(load_cluster(tmp_path / "data" / "cluster.toml"))
        alice = device_homed_at(ring, "n1")
        await publish(url, alice)
        async with session(url, alice):
            pass
        assert await _stop(proc) == 0
    log = (tmp_path / "data" / "n1" / "node.log").read_text()
    assert " DEBUG wa_relay.node.n1: device " in log and "authenticated" in log
    assert " INFO wa_relay.node.n1: node n1 listening" in log
    # and without the flag, the file's own level (info) holds: no debug line
    proc = _cluster(tmp_path, 1, name="info", base=int(url.rsplit(":", 1)[1]))
    with trio.fail_after(60):
        await _ready(proc, 1)
        async with session(url, alice):
            pass
        assert await _stop(proc) == 0
    second_run = (tmp_path / "data" / "n1" / "node.log").read_text()[len(log):]
    assert "listening" in second_run and " DEBUG " not in second_run


def _low_nofile() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))


def test_a_low_file_descriptor_limit_is_a_startup_warning(tmp_path) -> None:
    base = free_base_port(2)
    subprocess.run([*tool("wa-relay"), "init-cluster", "--nodes", "1", "--base-port", str(base),
                    "--data", str(tmp_path)], check=True, capture_output=True, timeout=60)
    proc = subprocess.Popen([*tool("wa-relay"), "serve", "--config", str(tmp_path / "n1" / "node.toml")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            preexec_fn=_low_nofile)  # noqa: PLW1509 - only setrlimit
    try:
        assert proc.stdout.readline().startswith(b"ready n1 ")
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert b"file-descriptor limit (256, ulimit -n) is below max_connections (10000)" in err
    assert "file-descriptor limit (256" in (tmp_path / "n1" / "node.log").read_text()


async def test_online_backup_and_restore(tmp_path) -> None:
    """A backup taken while the node runs, restored into an emptied node, delivers
    what was queued; the backup and the restored files are private."""
    proc = _cluster(tmp_path, 1)
    node_toml = tmp_path / "data" / "n1" / "node.toml"
    with trio.fail_after(60):
        [(_, url)] = await _ready(proc, 1)
        try:
            ring = Ring(load_cluster(tmp_path / "data" / "cluster.toml"))
            alice, bob = device_homed_at(ring, "n1"), device_homed_at(ring, "n1")
            await publish(url, alice)
            await publish(url, bob)
            mid = os.urandom(16)
            async with session(url, alice) as a:
                sent = await a.request(Send(id=2, msg_id=mid, recipients=[bob.recipient(b"b")]))
                assert sent == Sent(id=2, status="stored")
            run = await trio.run_process(
                [*tool("wa-relay"), "backup", "--config", str(node_toml), "--out",
                 str(tmp_path / "bk")], capture_stdout=True, capture_stderr=True, check=False)
            assert run.returncode == 0, run.stderr
            assert run.stdout.startswith(b"backed up node n1 to ")
        finally:
            assert await _stop(proc) == 0
        backup_files = sorted(p.relative_to(tmp_path / "bk").as_posix()
                              for p in (tmp_path / "bk").rglob("*"))
        assert backup_files == ["cluster.toml", "data", "data/data.mdb", "data/media", "manifest.json",
                                "node.key", "node.toml"]
        for p in (tmp_path / "bk").rglob("*"):
            assert p.stat().st_mode & 0o077 == 0, p
        manifest = json.loads((tmp_path / "bk" / "manifest.json").read_text())
        assert manifest["node"] == "n1" and manifest["ring"] == ring.version
        # lose the node's data and key, restore
        (tmp_path / "data" / "n1" / "data").rename(tmp_path / "lost")
        (tmp_path / "data" / "n1" / "node.key").unlink()
        run = await trio.run_process(
            [*tool("wa-relay"), "restore", "--config", str(node_toml), "--from",
             str(tmp_path / "bk")], capture_stdout=True, capture_stderr=True, check=False)
        assert run.returncode == 0, run.stderr
        again = await trio.run_process(
            [*tool("wa-relay"), "restore", "--config", str(node_toml), "--from",
             str(tmp_path / "bk")], capture_stderr=True, check=False)
        assert again.returncode == 1 and b"already holds an LMDB environment" in again.stderr
        proc = _cluster(tmp_path, 1, name="restored", base=int(url.rsplit(":", 1)[1]))
        try:
            await _ready(proc, 1)
            async with session(url, bob) as b:
                await b.send(Sync(id=2))
                frame = await b.recv()
                assert isinstance(frame, Deliver) and frame.items[0].envelope.msg_id == mid
        finally:
            assert await _stop(proc) == 0
