"""A ``wa-relay`` process out of file descriptors (EMFILE: a low ``ulimit -n`` and a
flood of TCP connections) must refuse new connections and keep serving the ones
it has, then accept again once descriptors are free, and never exit. A
regression guard: trio's ``serve_listeners`` backs off on EMFILE; anything that
turned that error into an exception out of the server would stop the node."""

from __future__ import annotations

import resource
import signal
import subprocess

import trio
from relay_harness import connect

from relay.protocol.frames import Ok, Ping
from relay.testing import free_base_port, tool

NOFILE = 64
FLOOD = 150


def _low_nofile() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (NOFILE, NOFILE))


async def _until_logged(log: trio.Path, needle: str, seconds: float) -> None:
    deadline = trio.current_time() + seconds
    while needle not in (await log.read_text() if await log.exists() else ""):
        assert trio.current_time() < deadline, f"{needle!r} not in {log}"
        await trio.sleep(0.05)


async def test_a_node_out_of_file_descriptors_keeps_serving_and_recovers(tmp_path) -> None:
    base = free_base_port(2)
    with trio.fail_after(60):
        await trio.run_process([*tool("wa-relay"), "init-cluster", "--nodes", "1", "--base-port",
                                str(base), "--data", str(tmp_path), "--insecure-loopback"],
                               capture_stdout=True, capture_stderr=True)
    proc = await trio.lowlevel.open_process(
        [*tool("wa-relay"), "serve", "--config", str(tmp_path / "n1" / "node.toml")],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
        preexec_fn=_low_nofile)  # noqa: PLW1509 - only setrlimit
    try:
        with trio.fail_after(30):
            out = b""
            while b"\n" not in out:
                more = await proc.stdout.receive_some()
                assert more, "wa-relay serve exited before it was ready"
                out += more
            line = out.decode()
            assert line.startswith("ready n1 "), line
            url = line.split()[2]
            async with connect(url) as held:
                await held.hello()
                flood = []
                for _ in range(FLOOD):  # idle sockets: the kernel completes them all
                    sock = trio.socket.socket()
                    await sock.connect(("127.0.0.1", base))
                    flood.append(sock)
                await _until_logged(trio.Path(tmp_path, "n1", "node.log"), "EMFILE", 10)
                assert await held.request(Ping(id=5)) == Ok(id=5)  # served at EMFILE
                assert proc.poll() is None
                for sock in flood:
                    sock.close()
                async with connect(url) as fresh:  # accepting again
                    assert len((await fresh.hello()).nonce) >= 16
                assert await held.request(Ping(id=6)) == Ok(id=6)
    finally:
        proc.send_signal(signal.SIGTERM)
        with trio.fail_after(30):
            await proc.wait()
        await proc.stdout.aclose()
    assert proc.returncode == 0
