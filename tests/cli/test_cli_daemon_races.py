"""Concurrent commands racing one home's state through ``wa-cli daemon`` (real
``wa-cli`` processes, in-process relay nodes on 127.0.0.1, plain JSON-RPC sockets)."""

from __future__ import annotations

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
