"""Media (issue 4): one large file from alice (home n1) to bob (home n2) through real
processes: two ``wa-relay serve`` nodes (LMDB) and ``wa-cli send --file`` / ``wa-cli
recv --downloads``, so bob's download is forwarded n2 -> n1 chunk by chunk.

Figures:

* upload and download MB/s end to end (the whole ``wa-cli`` command: encryption or
  decryption, hashing, 256 KiB request/answer round trips, fsyncs at the node);
* in the same run, the ceilings on this machine: file encryption and decryption
  alone (secretstream, in-process), a raw loopback TCP copy and raw trio-websocket
  frames of 256 KiB one way;
* memory: peak RSS (``ru_maxrss`` from ``wait4``) of each ``wa-cli`` command next to
  the same command sending a short text, and the growth of each node's peak RSS
  (``VmHWM``) over the transfer. The target is less than 64 MiB of growth for 200 MiB.

Sizes: 200 MiB (``--quick``: 20 MiB). The received file is checked bit for bit.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import socket
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

import trio

from relay.config import init_cluster

from . import raw_ws
from .scenario import BenchContext

MiB = 1024 * 1024
CHUNK = 256 * 1024
READY_TIMEOUT = 30.0
CLI_TIMEOUT = 600.0


class BenchError(RuntimeError):
    """A process of the media scenario did not behave."""


def _tool(name: str) -> list[str]:
    script = Path(sys.executable).parent / name
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", {"wa-relay": "relay", "wa-cli": "cli"}[name]]


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "WA_HOME"}
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _hwm_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise BenchError(f"no VmHWM for pid {pid}")


def _run(argv: list[str], out: Path) -> tuple[float, int, str]:
    """Run ``argv``; return (seconds, peak RSS in KiB, stdout).

    The peak is the child's own ``VmHWM``, polled every 10 ms until it exits
    (a high-water mark, so the last read is the peak up to then). ``ru_maxrss``
    from ``wait4`` is not used: it survives ``exec`` and so reports the RSS of
    this (large) benchmark process at fork time instead of the command's own.
    """
    peak = 0
    with out.open("wb") as stdout, (out.with_suffix(".err")).open("wb") as stderr:
        start = time.perf_counter()
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr,
                                env=_env())
        while proc.poll() is None:
            try:
                peak = max(peak, _hwm_kib(proc.pid))
            except (OSError, BenchError):
                pass  # exiting: /proc/PID/status is gone or has no VmHWM any more
            time.sleep(0.01)
        seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise BenchError(f"{' '.join(argv[-4:])} exited {proc.returncode}: "
                         f"{out.with_suffix('.err').read_text()[-2000:]}")
    return seconds, peak, out.read_text()


class _Nodes:
    """``wa-relay serve`` processes n1, n2 on a fresh cluster under ``root``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.procs: dict[str, subprocess.Popen] = {}
        self.urls: dict[str, str] = {}

    def start(self) -> None:
        for config in init_cluster(self.root, 2, _free_base_port(4)):
            node_id = config.parent.name
            with (self.root / f"{node_id}.stderr").open("wb") as stderr:
                proc = subprocess.Popen([*_tool("wa-relay"), "serve", "--config", str(config)],
                                        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                        stderr=stderr, env=_env(), cwd=str(config.parent))
            self.procs[node_id] = proc
            deadline = time.monotonic() + READY_TIMEOUT
            while time.monotonic() < deadline:
                line = proc.stdout.readline().decode().split()
                if len(line) == 3 and line[0] == "ready":
                    self.urls[node_id] = line[2]
                    break
                if not line and proc.poll() is not None:
                    break
            else:
                raise BenchError(f"node {node_id} did not start")
            if node_id not in self.urls:
                raise BenchError(f"node {node_id} exited: "
                                 f"{(self.root / f'{node_id}.stderr').read_text()[-2000:]}")

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()


def _free_base_port(count: int) -> int:
    """A base port P with P..P+count-1 free on 127.0.0.1 (below the ephemeral range)."""
    rng = random.Random()
    for _ in range(200):
        base = rng.randrange(20000, 30000)
        try:
            for port in range(base, base + count):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", port))
        except OSError:
            continue
        return base
    raise BenchError("no free ports")


def _cli(home: Path, *args: str) -> list[str]:
    return [*_tool("wa-cli"), "--home", str(home), "--json", *args]


def _account(root: Path, name: str, nodes: _Nodes, home_node: str) -> tuple[Path, str]:
    """Init ``name`` until its home is ``home_node``; returns (home dir, user_id)."""
    root.mkdir(parents=True, exist_ok=True)
    for i in range(60):
        home = root / f"{name}-{i}"
        _, _, out = _run(_cli(home, "init", "--trust-on-first-use", "--name", name, "--relay", nodes.urls[home_node]),
                         root / f"{name}-{i}.out")
        info = json.loads(out)
        if info["home"].rstrip("/") == nodes.urls[home_node].rstrip("/"):
            return home, info["user_id"]
    raise BenchError(f"no account for {name} landed on {home_node}")


def _write_file(path: Path, size: int) -> str:
    digest = hashlib.sha256()
    block = os.urandom(MiB)
    with path.open("wb") as f:
        for i in range(0, size, MiB):
            piece = (i.to_bytes(8, "big") + block[8:])[:min(MiB, size - i)]
            f.write(piece)
            digest.update(piece)
    return digest.hexdigest()


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(MiB):
            digest.update(block)
    return digest.hexdigest()


def _transfer(root: Path, size: int) -> dict[str, float]:
    """The process part (blocking; run in a thread)."""
    from cli.features.mediacrypt import decrypt_file, encrypt_file

    nodes = _Nodes(root / "cluster")
    nodes.start()
    try:
        alice, alice_id = _account(root / "devices", "alice", nodes, "n1")
        bob, bob_id = _account(root / "devices", "bob", nodes, "n2")
        logs = root / "logs"
        logs.mkdir()
        _run(_cli(alice, "contacts", "add", "bob", bob_id), logs / "contact.out")
        # recv fetches by itself only a contact's file, up to --auto-download bytes (of
        # ciphertext, a little more than the file: 1 MiB of room covers the overhead)
        _run(_cli(bob, "contacts", "add", "alice", alice_id), logs / "contact-bob.out")
        _, text_send_kib, _ = _run(_cli(alice, "send", "bob", "hello"), logs / "text.out")
        _, text_recv_kib, _ = _run(_cli(bob, "recv", "--timeout", "0.5"), logs / "text-recv.out")
        src = root / "big.bin"
        want = _write_file(src, size)
        pids = {nid: p.pid for nid, p in nodes.procs.items()}
        hwm0 = {nid: _hwm_kib(pid) for nid, pid in pids.items()}
        up_s, send_kib, _ = _run(_cli(alice, "send", "bob", "--file", str(src)), logs / "send.out")
        downloads = root / "downloads"
        down_s, recv_kib, out = _run(
            _cli(bob, "recv", "--timeout", "0.5", "--downloads", str(downloads),
                 "--auto-download", str(size + MiB)),
            logs / "recv.out")
        hwm1 = {nid: _hwm_kib(pid) for nid, pid in pids.items()}
        row = json.loads(out.splitlines()[0])
        if _sha256(Path(row["file"]["path"])) != want:
            raise BenchError("the received file differs from the sent one")
        t0 = time.perf_counter()
        enc = encrypt_file(src, root / "big.enc")
        enc_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        decrypt_file(root / "big.enc", root / "big.dec", enc.key)
        dec_s = time.perf_counter() - t0
    finally:
        nodes.stop()
    return {
        "upload_s": up_s, "download_s": down_s, "encrypt_s": enc_s, "decrypt_s": dec_s,
        "send_kib": send_kib, "recv_kib": recv_kib, "text_send_kib": text_send_kib,
        "text_recv_kib": text_recv_kib,
        "n1_growth_kib": hwm1["n1"] - hwm0["n1"], "n2_growth_kib": hwm1["n2"] - hwm0["n2"],
        "n1_hwm_kib": hwm1["n1"], "n2_hwm_kib": hwm1["n2"],
    }


async def _raw_tcp_copy(size: int) -> float:
    """Seconds to copy ``size`` bytes one way over a loopback TCP connection (trio streams)."""
    done = trio.Event()
    got = 0

    async def server(stream: trio.SocketStream) -> None:
        nonlocal got
        async with stream:
            while got < size and (data := await stream.receive_some(CHUNK)):
                got += len(data)
        done.set()

    async with trio.open_nursery() as nursery:
        (listener,) = await nursery.start(partial(trio.serve_tcp, server, 0, host="127.0.0.1"))
        port = listener.socket.getsockname()[1]
        payload = os.urandom(CHUNK)
        start = time.perf_counter()
        async with await trio.open_tcp_stream("127.0.0.1", port) as client:
            for _ in range(size // CHUNK):
                await client.send_all(payload)
            await done.wait()
        seconds = time.perf_counter() - start
        nursery.cancel_scope.cancel()
    return seconds


async def run(ctx: BenchContext) -> None:
    """Scenario: a 200 MiB file (20 MiB quick) through wa-cli and two node processes."""
    r = ctx.report
    size = (20 if ctx.quick else 200) * MiB
    mb = size / 1e6
    figs = await trio.to_thread.run_sync(_transfer, ctx.tmp, size)
    r.note(f"{size // MiB} MiB random file, alice (home n1) -> bob (home n2), download "
           "forwarded n2 -> n1; LMDB nodes as processes; whole wa-cli commands timed")
    r.figure("upload_MBps", "upload: wa-cli send --file (encrypt + upload)",
             mb / figs["upload_s"], "MB/s", ",.1f")
    r.figure("download_MBps", "download: wa-cli recv (download + verify + decrypt)",
             mb / figs["download_s"], "MB/s", ",.1f")
    r.figure("encrypt_MBps", "  ceiling: file encryption alone (in-process)",
             mb / figs["encrypt_s"], "MB/s", ",.1f")
    r.figure("decrypt_MBps", "  ceiling: file decryption alone (in-process)",
             mb / figs["decrypt_s"], "MB/s", ",.1f")
    tcp_s = await _raw_tcp_copy(size)
    r.figure("raw_tcp_MBps", "  ceiling: raw loopback TCP copy, same size", mb / tcp_s, "MB/s",
             ",.1f")
    frames = await raw_ws.one_way(size // CHUNK, CHUNK)
    r.figure("raw_ws_MBps", "  ceiling: raw trio-websocket, 256 KiB frames one way",
             frames * CHUNK / 1e6, "MB/s", ",.1f")
    mib = 1024
    r.figure("send_peak_MiB", "peak RSS, wa-cli send --file", figs["send_kib"] / mib, "MiB",
             ",.1f")
    r.figure("text_send_peak_MiB", "  same command sending a short text",
             figs["text_send_kib"] / mib, "MiB", ",.1f")
    r.figure("recv_peak_MiB", "peak RSS, wa-cli recv (with the file)", figs["recv_kib"] / mib,
             "MiB", ",.1f")
    r.figure("text_recv_peak_MiB", "  same command receiving a short text",
             figs["text_recv_kib"] / mib, "MiB", ",.1f")
    r.figure("n1_growth_MiB", "node n1 (holds the blob): peak RSS growth",
             figs["n1_growth_kib"] / mib, "MiB", ",.1f")
    r.figure("n2_growth_MiB", "node n2 (forwards the download): peak RSS growth",
             figs["n2_growth_kib"] / mib, "MiB", ",.1f")
    r.note(f"node peak RSS after the transfer: n1 {figs['n1_hwm_kib'] / mib:.1f} MiB, "
           f"n2 {figs['n2_hwm_kib'] / mib:.1f} MiB; target: growth < 64 MiB per process")
