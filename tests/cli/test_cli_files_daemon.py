"""Files through ``wa-cli daemon`` and progress bars, with real ``wa-cli`` processes
against in-process relay nodes on 127.0.0.1: ``send --file`` and ``history
--download`` through a running daemon, the JSON-RPC ``upload``/``sendFile``/
``download`` methods from a plain socket, and the progress bar (bytes and rate) on a
pseudo-terminal, never with ``--json`` or on a pipe."""

from __future__ import annotations

import json
import os
import random
import re
import signal
from pathlib import Path

import trio
from cli_cluster import run_cluster
from cli_procs import Running, lines, signal_before_our_code, wa, without_site_report
from cli_pty import OnTty

DEADLINE = 60
RATE = re.compile(r"\d+(\.\d+)?\s?[kMG]?B/s")  # tqdm's rate, e.g. "12.3MB/s"


def pattern(size: int, seed: int) -> bytes:
    block = bytes((i * 31 + seed) % 251 for i in range(4096))
    return (block * (size // len(block) + 1))[:size]


def content(path: str | Path) -> bytes:
    return Path(path).read_bytes()


async def contacts(tmp_path: Path, relay: str) -> tuple[dict, dict]:
    """Accounts alice (home ``a``) and bob (``b``), each the other's contact."""
    (alice,) = lines(await wa(tmp_path / "a", "--json", "init", "--trust-on-first-use",
                              "--name", "alice", "--relay", relay))
    (bob,) = lines(await wa(tmp_path / "b", "--json", "init", "--trust-on-first-use",
                            "--name", "bob", "--relay", relay))
    await wa(tmp_path / "a", "contacts", "add", "bob", bob["user_id"])
    await wa(tmp_path / "b", "contacts", "add", "alice", alice["user_id"])
    return alice, bob


class Rpc:
    """A JSON-RPC client made of a Unix socket and ``json`` (no project code)."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream, self.buf, self.notes = stream, b"", []

    async def call(self, rid: int, method: str, params: dict) -> dict:
        await self.stream.send_all(json.dumps({"jsonrpc": "2.0", "id": rid, "method": method,
                                               "params": params}).encode() + b"\n")
        while True:
            while b"\n" not in self.buf:
                chunk = await self.stream.receive_some()
                assert chunk, "the daemon closed the connection"
                self.buf += chunk
            line, self.buf = self.buf.split(b"\n", 1)
            msg = json.loads(line)
            if "id" in msg:
                return msg
            self.notes.append(msg)


async def test_files_through_the_daemon_cli_and_json_rpc(tmp_path):
    daemons: list[Running] = []
    try:
        with trio.fail_after(DEADLINE):
            async with run_cluster(1) as cluster:
                alice, bob = await contacts(tmp_path, cluster.urls["n1"])
                for home in ("a", "b"):
                    daemons.append(await Running.start(tmp_path / home, "--json", "daemon"))
                    await daemons[-1].json()
                photo = tmp_path / "photo.bin"
                photo.write_bytes(pattern(600_000, 1))  # three chunks
                # wa-cli send --file goes through bob's daemon (no lock error)
                (sent,) = lines(await wa(tmp_path / "b", "--json", "send", "alice", "--file",
                                         str(photo), "a caption"))
                assert sent["status"] == "stored" and sent["to"] == alice["user_id"]
                assert sent["file"] == {"name": "photo.bin", "size": 600_000,
                                        "mime": "application/octet-stream"}
                # alice's recv goes through her daemon; above --auto-download the file
                # is held (listed with the command that fetches it), as without a daemon
                got = [g for g in lines(await wa(tmp_path / "a", "--json", "recv", "--timeout",
                                                 "0.5", "--auto-download", "1000"))
                       if g.get("type") == "file"]
                assert [g["id"] for g in got] == [sent["id"]]
                assert got[0]["file"]["path"] is None
                assert got[0]["file"]["fetch"] == "wa-cli history bob --download"
                # history --download: her daemon fetches it, this process shows it
                rows = lines(await wa(tmp_path / "a", "--json", "history", "--download"))
                (row,) = [r for r in rows if r["id"] == sent["id"]]
                saved = Path(row["file"]["path"])
                assert saved.parent == tmp_path / "a" / "downloads"
                assert content(saved) == content(photo)
                # under the limit, recv through the daemon downloads it before printing it
                (small,) = lines(await wa(tmp_path / "b", "--json", "send", "alice", "--file",
                                          str(photo)))
                got = [g for g in lines(await wa(tmp_path / "a", "--json", "recv", "--timeout",
                                                 "0.5")) if g.get("type") == "file"]
                assert [g["id"] for g in got] == [small["id"]]
                assert got[0]["file"]["path"] != str(saved)
                assert content(got[0]["file"]["path"]) == content(photo)
                # an unknown contact is a usage error (exit 2) before anything is uploaded
                bad = await wa(tmp_path / "b", "send", "nobody", "--file", str(photo),
                               check=False)
                assert bad.returncode == 2, bad.stderr.decode()
                assert not list((tmp_path / "b" / "media").glob("up-*"))

                # the same from a plain socket: sendFile with a path, progress notes
                doc = tmp_path / "doc.txt"
                doc.write_bytes(pattern(300_000, 2))
                rpc_b = Rpc(await trio.open_unix_socket(str(tmp_path / "b" / "daemon.sock")))
                answer = await rpc_b.call(1, "sendFile", {"to": alice["user_id"],
                                                          "path": str(doc), "progress": True})
                res = answer["result"]
                assert res["status"] == "stored" and res["file"]["size"] == 300_000
                assert res["file"]["mime"] == "text/plain"
                notes = [n["params"] for n in rpc_b.notes if n["method"] == "progress"]
                assert notes and all(n["transfer"] == "upload" and n["name"] == "doc.txt"
                                     for n in notes)
                assert all(0 <= n["done"] <= n["total"] for n in notes)
                assert notes[-1]["total"] >= 300_000
                # errors: relative path, reused token, unknown message
                bad = await rpc_b.call(2, "sendFile", {"to": "alice", "path": "doc.txt"})
                assert bad["error"]["code"] == -32602
                up = (await rpc_b.call(3, "upload", {"path": str(doc)}))["result"]
                assert up["file"]["name"] == "doc.txt" and len(up["upload"]) == 24
                again = await rpc_b.call(4, "sendFile", {"group": "nogroup",
                                                         "upload": up["upload"]})
                assert again["error"]["data"] == {"reason": "unknown_group"}
                ok = await rpc_b.call(5, "sendFile", {"to": "alice", "upload": up["upload"],
                                                      "caption": "second"})
                assert ok["result"]["status"] == "stored"
                used = await rpc_b.call(6, "sendFile", {"to": "alice", "upload": up["upload"]})
                assert used["error"]["data"] == {"reason": "unknown_upload"}
                # alice downloads both over her socket into a directory of her choosing
                await wa(tmp_path / "a", "--json", "recv", "--timeout", "0.5",
                         "--auto-download", "0")
                rpc_a = Rpc(await trio.open_unix_socket(str(tmp_path / "a" / "daemon.sock")))
                into = tmp_path / "into"
                for rid, msg_id in ((1, res["id"]), (2, ok["result"]["id"])):
                    info = (await rpc_a.call(rid, "download", {"id": msg_id, "dir": str(into),
                                                               "progress": True}))["result"]
                    assert content(info["path"]) == content(doc)
                    assert Path(info["path"]).parent == into
                assert {n["params"]["transfer"] for n in rpc_a.notes} == {"download"}
                missing = await rpc_a.call(3, "download", {"id": "00" * 16})
                assert missing["error"]["data"] == {"reason": "unknown_message"}
                for rpc in (rpc_a, rpc_b):
                    await rpc.stream.aclose()
                for d in daemons:
                    code, err = await d.stop()
                    assert code == 0 and "Traceback" not in err
    finally:
        for d in daemons:
            await d.aclose()


async def test_progress_bar_shows_bytes_and_rate_on_a_terminal_only(tmp_path):
    daemon = None
    try:
        with trio.fail_after(DEADLINE):
            async with run_cluster(1) as cluster:
                await contacts(tmp_path, cluster.urls["n1"])
                big = tmp_path / "big.bin"
                big.write_bytes(pattern(3 * 1024 * 1024, 3))
                # stderr on a terminal: a bar with the bytes and the rate
                tty = await OnTty.start(tmp_path / "b", "send", "alice", "--file", str(big))
                assert await tty.finish() == 0, tty.tty
                assert "uploading big.bin" in tty.tty
                assert re.search(r"3\.00M/3\.00M", tty.tty), tty.tty
                assert RATE.search(tty.tty), tty.tty
                assert "sent big.bin to alice (stored)" in tty.out
                # receiving side: the download bar
                tty = await OnTty.start(tmp_path / "a", "recv", "--timeout", "0.5")
                assert await tty.finish() == 0, tty.tty
                assert "downloading big.bin" in tty.tty and RATE.search(tty.tty), tty.tty
                # with --json, or stderr not a terminal: no bar
                tty = await OnTty.start(tmp_path / "b", "--json", "send", "alice", "--file",
                                        str(big))
                assert await tty.finish() == 0
                assert not RATE.search(tty.tty) and "uploading" not in tty.tty
                piped = await wa(tmp_path / "b", "send", "alice", "--file", str(big))
                assert b"uploading" not in piped.stderr and not RATE.search(
                    piped.stderr.decode())
                # through the daemon: its progress notifications drive the same bar
                daemon = await Running.start(tmp_path / "b", "--json", "daemon")
                await daemon.json()
                tty = await OnTty.start(tmp_path / "b", "send", "alice", "--file", str(big))
                assert await tty.finish() == 0, tty.tty
                assert "uploading big.bin" in tty.tty and RATE.search(tty.tty), tty.tty
                assert re.search(r"/3\.00M", tty.tty), tty.tty
                code, _ = await daemon.stop()
                assert code == 0
    finally:
        if daemon is not None:
            await daemon.aclose()


FILE_TRIALS = int(os.environ.get("WA_CTRL_C_FILE_TRIALS", "6"))  # per mode


async def test_ctrl_c_at_random_moments_of_send_file(tmp_path):
    """Without and with a daemon: exit 0 iff the file message reaches the recipient
    (once), 130 (or killed by the signal before Python's handler) iff it does not; the
    moments spread over start-up, the upload and the send."""
    rng = random.Random(int(os.environ.get("WA_CTRL_C_SEED", "1415")))
    daemon = None
    try:
        with trio.fail_after(DEADLINE + 8 * FILE_TRIALS):
            async with run_cluster(1) as cluster:
                await contacts(tmp_path, cluster.urls["n1"])
                codes: dict[str, int] = {}
                for mode in ("alone", "daemon"):
                    if mode == "daemon":
                        daemon = await Running.start(tmp_path / "b", "--json", "daemon")
                        await daemon.json()
                    start = trio.current_time()
                    await wa(tmp_path / "b", "send", "alice", "--file", str(
                        _file(tmp_path, f"{mode}-timed.bin")), fresh=True)  # as the trials
                    span = trio.current_time() - start
                    for i in range(FILE_TRIALS):
                        name = f"{mode}-{i}.bin"
                        send = await Running.start(tmp_path / "b", "--json", "send", "alice",
                                                   "--file", str(_file(tmp_path, name)),
                                                   fresh=True)  # start-up is a moment
                        try:
                            await trio.sleep(rng.uniform(0.0, span * 1.1))  # the random moment
                            send.proc.send_signal(signal.SIGINT)
                            code, err = await send.finish()
                        finally:
                            await send.aclose()
                        err = without_site_report(err)
                        if signal_before_our_code(code, err):
                            code = 130  # the interpreter itself, in its first ~50 ms (docs/cli.md)
                        else:  # -SIGINT: killed before Python set up its handler (a shell shows 130)
                            assert code in (0, 130, -signal.SIGINT), err
                            assert "Traceback" not in err, err
                        codes[name] = code
                if daemon is not None:
                    code, _ = await daemon.stop()
                    assert code == 0
                got = lines(await wa(tmp_path / "a", "--json", "recv", "--timeout", "0.5"))
                names = [g["file"]["name"] for g in got if g.get("type") == "file"
                         and "-timed" not in g["file"]["name"]]
                assert len(names) == len(set(names))  # never shown twice
                assert sorted(names) == sorted(n for n, c in codes.items() if c == 0), codes
    finally:
        if daemon is not None:
            await daemon.aclose()


def _file(tmp_path: Path, name: str) -> Path:
    path = tmp_path / name
    path.write_bytes(pattern(1024 * 1024, len(name)))
    return path
