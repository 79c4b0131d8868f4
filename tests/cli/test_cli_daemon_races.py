"""Concurrent commands racing one home's state through ``wa-cli daemon`` (real
``wa-cli`` processes, in-process relay nodes on 127.0.0.1, plain JSON-RPC sockets)."""

from __future__ import annotations

import json

import trio
from cli_cluster import run_cluster
from cli_procs import Running, lines, wa
from test_cli_files_daemon import Rpc, contacts, content, pattern

DEADLINE = 60


async def test_two_downloads_of_one_file_at_once_both_get_the_file(tmp_path):
    """Two callers (``wa-cli history --download`` in two terminals, or a script and
    ``recv``) download the same file message at the same time: both must end with the
    file, and the message must not be marked failed for good."""
    daemon = None
    try:
        with trio.fail_after(DEADLINE):
            async with run_cluster(1) as cluster:
                alice, bob = await contacts(tmp_path, cluster.urls["n1"])
                photo = tmp_path / "photo.bin"
                photo.write_bytes(pattern(1_500_000, 3))
                (sent,) = lines(await wa(tmp_path / "b", "--json", "send", "alice", "--file",
                                         str(photo)))
                await wa(tmp_path / "a", "--json", "recv", "--timeout", "0.5",
                         "--auto-download", "0")
                daemon = await Running.start(tmp_path / "a", "--json", "daemon")
                await daemon.json()
                sock = str(tmp_path / "a" / "daemon.sock")
                rpcs = [Rpc(await trio.open_unix_socket(sock)) for _ in range(2)]
                answers: list[dict] = []

                async def download(rpc: Rpc) -> None:
                    answers.append(await rpc.call(1, "download", {"id": sent["id"]}))

                async with trio.open_nursery() as nursery:
                    for rpc in rpcs:
                        nursery.start_soon(download, rpc)
                infos = [a.get("result") for a in answers]
                assert all(i is not None and "error" not in i for i in infos), answers
                assert all(content(i["path"]) == content(photo) for i in infos), infos
                assert len({i["path"] for i in infos}) == 1  # one copy saved
                assert [p.name for p in (tmp_path / "a" / "downloads").iterdir()] == ["photo.bin"]
                for rpc in rpcs:
                    await rpc.stream.aclose()
                code, err = await daemon.stop()
                assert code == 0 and "Traceback" not in err
    finally:
        if daemon is not None:
            await daemon.aclose()


def _browser_post(port: int, body: bytes) -> bytes:
    """What a web page's ``fetch("http://127.0.0.1:PORT/", {method: "POST", mode:
    "no-cors", body})`` makes a browser write: a "simple" request (text/plain), sent
    without any preflight or permission."""
    return (f"POST / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUser-Agent: Mozilla/5.0\r\n"
            f"Origin: https://evil.example\r\nContent-Type: text/plain;charset=UTF-8\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body


async def test_a_web_page_cannot_drive_the_tcp_listener_nor_a_batch_subscribe_200_times(
        tmp_path):
    """Cross-protocol request: any web page the user visits can have the browser POST
    to ``127.0.0.1:PORT``. The daemon answered each header line with a parse error and
    ran the JSON-RPC line of the body: the page could send messages as the device (or
    send out any readable file with ``sendFile``). A connection that starts like an
    HTTP request is closed at once, without running anything."""
    daemon = None
    try:
        with trio.fail_after(DEADLINE):
            async with run_cluster(1) as cluster:
                alice, bob = await contacts(tmp_path, cluster.urls["n1"])
                daemon = await Running.start(tmp_path / "b", "--json", "daemon", "--tcp", "0")
                port = int((await daemon.json())["tcp"].rsplit(":", 1)[1])
                rpc = Rpc(await trio.open_tcp_stream("127.0.0.1", port))
                while not (await rpc.call(1, "id", {}))["result"]["connected"]:  # noqa: ASYNC110 - another process: poll, bounded
                    await trio.sleep(0.05)
                body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "send",
                                   "params": {"to": "alice", "text": "sent by a web page"}})
                stream = await trio.open_tcp_stream("127.0.0.1", port)
                await stream.send_all(_browser_post(port, body.encode() + b"\n"))
                answer, closed = b"", False
                with trio.move_on_after(5):
                    while chunk := await stream.receive_some():
                        answer += chunk
                    closed = True
                await stream.aclose()
                assert b'"result"' not in answer and closed, answer
                # the same line from a JSON-RPC client over TCP still works
                ok = await rpc.call(2, "send", {"to": "alice", "text": "from a real client"})
                assert ok["result"]["status"] == "stored", ok
                # a batch line of 200 subscriptions: each event would be written 200 times
                # while every other subscriber waits; past 16 per connection, refused
                batch = [{"jsonrpc": "2.0", "id": 100 + i, "method": "receive"}
                         for i in range(200)]
                await rpc.stream.send_all(json.dumps(batch).encode() + b"\n")
                while b"\n" not in rpc.buf:
                    rpc.buf += await rpc.stream.receive_some()
                line, rpc.buf = rpc.buf.split(b"\n", 1)
                answers = json.loads(line)
                assert len([a for a in answers if "result" in a]) == 16
                assert {a["error"]["data"]["reason"] for a in answers if "error" in a} == {
                    "too_many_subscriptions"}
                await rpc.stream.aclose()
                got = [g["text"] for g in lines(await wa(tmp_path / "a", "--json", "recv",
                                                         "--timeout", "0.5"))
                       if g.get("type") == "text"]
                assert got == ["from a real client"]
                code, err = await daemon.stop()
                assert code == 0 and "Traceback" not in err
    finally:
        if daemon is not None:
            await daemon.aclose()
