"""What a user sees of ``wa-cli daemon`` and of the commands that go through it, with
real ``wa-cli`` processes against in-process relay nodes on 127.0.0.1: the same as
without a daemon. ``recv``'s download bar names the file (on a pseudo-terminal),
``devices approve`` prints its notes when they happen, in the order of its output
without a daemon, and the daemon's first line says how to stop it: "Ctrl-C" only
in the terminal's foreground, else ``kill PID``."""

from __future__ import annotations

import contextlib
import fcntl
import os
import pty
import re
import signal
import subprocess
import sys
import termios
from pathlib import Path

import trio
from cli_cluster import run_cluster
from cli_procs import Running, lines, wa
from cli_pty import OnTty

DEADLINE = 60
ROW_TIME = re.compile(r"^\[[^\]]*\] ")


def pattern(size: int, seed: int) -> bytes:
    block = bytes((i * 31 + seed) % 251 for i in range(4096))
    return (block * (size // len(block) + 1))[:size]


async def contacts(tmp_path: Path, relay: str) -> tuple[dict, dict]:
    """Accounts alice (home ``a``) and bob (``b``), each the other's contact."""
    (alice,) = lines(await wa(tmp_path / "a", "--json", "init", "--trust-on-first-use",
                              "--name", "alice", "--relay", relay))
    (bob,) = lines(await wa(tmp_path / "b", "--json", "init", "--trust-on-first-use",
                            "--name", "bob", "--relay", relay))
    await wa(tmp_path / "a", "contacts", "add", "bob", bob["user_id"])
    await wa(tmp_path / "b", "contacts", "add", "alice", alice["user_id"])
    return alice, bob


async def recv_on_tty(home: Path) -> tuple[str, str]:
    """``wa-cli recv`` with stderr on a terminal: (terminal, stdout without the times)."""
    tty = await OnTty.start(home, "recv", "--timeout", "0.5")
    assert await tty.finish() == 0, tty.tty
    return tty.tty, ROW_TIME.sub("", tty.out)


async def test_recv_download_bar_names_the_file_with_and_without_the_daemon(tmp_path):
    daemon = None
    try:
        with trio.fail_after(DEADLINE):
            async with run_cluster(1) as cluster:
                await contacts(tmp_path, cluster.urls["n1"])
                for name, seed in (("first.bin", 1), ("second.bin", 2)):
                    (tmp_path / name).write_bytes(pattern(300_000, seed))
                # without a daemon
                await wa(tmp_path / "b", "send", "alice", "--file", str(tmp_path / "first.bin"))
                alone_tty, alone_out = await recv_on_tty(tmp_path / "a")
                assert "downloading first.bin" in alone_tty, alone_tty
                saved = tmp_path / "a" / "downloads" / "first.bin"
                assert alone_out == f"bob: (file)\n  file first.bin (300000 bytes) saved to " \
                                    f"{saved}\n", alone_out
                # through alice's daemon: the same bar and the same lines
                daemon = await Running.start(tmp_path / "a", "--json", "daemon")
                await daemon.json()
                await wa(tmp_path / "b", "send", "alice", "--file", str(tmp_path / "second.bin"))
                routed_tty, routed_out = await recv_on_tty(tmp_path / "a")
                assert "downloading second.bin" in routed_tty, routed_tty
                assert "downloading file" not in routed_tty, routed_tty
                assert routed_out == alone_out.replace("first.bin", "second.bin"), routed_out
                code, err = await daemon.stop()
                assert code == 0 and "Traceback" not in err, err
    finally:
        if daemon is not None:
            await daemon.aclose()


async def approve_while_the_device_waits(b: Path, link: Running) -> list[str]:
    """``wa-cli devices approve CODE --yes`` on home ``b`` with stdout and stderr on one
    pipe (as on a terminal), while the new device (``link``, stopped) cannot reach its
    home yet: its notes up to "waiting" must come while it waits (read before the
    device may go on), the rest after it; returns all the lines in order."""
    code = (await link.json())["code"]
    link.proc.send_signal(signal.SIGSTOP)
    proc = await trio.lowlevel.open_process(
        [sys.executable, "-m", "cli", "--home", str(b), "devices", "approve", code, "--yes"],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        buf = b""
        while b"waiting for it to reach its home" not in buf:  # the device is stopped
            chunk = await proc.stdout.receive_some()
            assert chunk, f"approve ended before its 'waiting' note: {buf!r}"
            buf += chunk
        assert b"approved device" not in buf, buf
        link.proc.send_signal(signal.SIGCONT)
        while chunk := await proc.stdout.receive_some():
            buf += chunk
        assert await proc.wait() == 0, buf
    finally:
        link.proc.send_signal(signal.SIGCONT)
        with trio.CancelScope(shield=True), trio.move_on_after(10):
            if proc.returncode is None:
                proc.kill()
            await proc.wait()
            await proc.stdout.aclose()
    assert (await link.finish())[0] == 0
    return buf.decode().splitlines()


def shape(out: list[str]) -> list[str]:
    """Lines without what differs from one link to the next (name, ids, fingerprint)."""
    return [re.sub(r"[0-9a-f]{4}( [0-9a-f]{4})+|version \d+", "X",
                   re.sub(r"device \d+ \(\w+\)", "device N (NAME)", line))
            .replace("laptop", "NAME").replace("tablet", "NAME") for line in out]


async def test_devices_approve_notes_come_as_they_happen_with_and_without_the_daemon(tmp_path):
    b = tmp_path / "b"
    daemon = link = None
    try:
        with trio.fail_after(DEADLINE):
            async with run_cluster(1) as cluster:
                relay = cluster.urls["n1"]
                await contacts(tmp_path, relay)
                link = await Running.start(tmp_path / "laptop", "--json", "link", "--relay",
                                           relay, "--name", "laptop")
                alone = await approve_while_the_device_waits(b, link)
                starts = ["device to link: laptop", "key fingerprint: ", "sent the account to "
                          "the new device; waiting for it to reach its home (at most 30 s)...",
                          "approved device 1 (laptop), key fingerprint ", "history sync: sent "]
                assert len(alone) == len(starts), alone
                assert all(line.startswith(s) for line, s in zip(alone, starts, strict=True)), \
                    alone
                daemon = await Running.start(b, "--json", "daemon")
                await daemon.json()
                link = await Running.start(tmp_path / "tablet", "--json", "link", "--relay",
                                           relay, "--name", "tablet")
                routed = await approve_while_the_device_waits(b, link)
                assert shape(routed) == shape(alone), (routed, alone)
                assert "approved device 2 (tablet)" in routed[3], routed
                # a failure: the notes written before it still come, then the error
                link = await Running.start(tmp_path / "phone", "--json", "link", "--relay",
                                           relay, "--name", "phone")
                code = (await link.json())["code"]
                wrong = await wa(b, "devices", "approve", code, stdin=b"0000 0000\n",
                                 check=False)
                assert wrong.returncode == 1, wrong.stderr
                err = wrong.stderr.decode()
                assert "device to link: phone" in err, err
                assert err.index("device to link: phone") < err.index(
                    "the key fingerprint differs"), err
                code, err = await daemon.stop()
                assert code == 0 and "Traceback" not in err, err
    finally:
        for proc in (daemon, link):
            if proc is not None:
                await proc.aclose()


def _take_terminal() -> None:  # in the child, after setsid: fd 0 becomes the controlling tty
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


async def first_line(proc: trio.Process) -> str:
    buf = b""
    while b"\n" not in buf:
        chunk = await proc.stdout.receive_some()
        assert chunk, f"it ended before its first line: {buf!r}"
        buf += chunk
    return buf.split(b"\n", 1)[0].decode()


async def stop_hint(argv: list[str], *, terminal: bool, stop) -> str:  # noqa: ANN001
    """Start ``argv`` in a new session (with ``terminal``, a pty as its controlling
    terminal and its stdin and stderr), read the daemon's first line, ``await
    stop(proc, line, master)`` and check it ended with exit code 0; returns the line."""
    master = None
    if terminal:
        master, slave = pty.openpty()
        io = {"stdin": slave, "stderr": slave, "preexec_fn": _take_terminal}
    else:
        io = {"stdin": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    try:
        proc = await trio.lowlevel.open_process(argv, stdout=subprocess.PIPE,
                                                start_new_session=True, **io)
    finally:
        if terminal:
            os.close(slave)
    try:
        line = await first_line(proc)
        await stop(proc, line, master)
        assert await proc.wait() == 0, line
        return line
    finally:
        with trio.CancelScope(shield=True), trio.move_on_after(10):
            if proc.returncode is None:
                proc.kill()
            await proc.wait()
            await proc.stdout.aclose()
            if master is not None:
                os.close(master)


async def ctrl_c(proc: trio.Process, line: str, master: int | None) -> None:
    os.write(master, b"\x03")  # typed on the terminal: SIGINT to its foreground


async def kill_named_pid(proc: trio.Process, line: str, master: int | None) -> None:
    named = re.fullmatch(r".* \(stop it with: kill (\d+)\)", line)
    assert named, line
    os.kill(int(named[1]), signal.SIGTERM)


async def test_the_daemon_says_ctrl_c_only_in_the_foreground_else_kill_pid(tmp_path):
    home = tmp_path / "a"
    daemon = [sys.executable, "-m", "cli", "--home", str(home), "daemon"]
    pidfile = tmp_path / "job.pid"
    try:
        with trio.fail_after(DEADLINE):
            async with run_cluster(1) as cluster:
                await wa(home, "init", "--trust-on-first-use", "--name", "alice", "--relay",
                         cluster.urls["n1"])
                sock = home / "daemon.sock"
                # in the foreground of its terminal: Ctrl-C there stops it
                line = await stop_hint(daemon, terminal=True, stop=ctrl_c)
                assert line == f"serving {sock} (Ctrl-C to stop)", line
                # `wa-cli daemon &` in a shell with job control: a background job, which
                # the terminal's Ctrl-C does not reach; `kill PID` (SIGTERM) stops it
                job = ["bash", "-c", 'set -m; f=$1; shift; "$@" & echo $! > "$f"; wait $!',
                       "bash", str(pidfile), *daemon]
                line = await stop_hint(job, terminal=True, stop=kill_named_pid)
                assert line == f"serving {sock} (stop it with: kill " \
                               f"{pidfile.read_text().strip()})", line
                pidfile.unlink()  # it ended (the shell waited for it)
                # no terminal at all (a service, a pipe)
                line = await stop_hint(daemon, terminal=False, stop=kill_named_pid)
                assert "Ctrl-C" not in line, line
    finally:  # a background job outlives its shell: never leave it running on a failure
        if pidfile.exists():
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pidfile.read_text()), signal.SIGKILL)
