"""Finding 18 (docs/reliability.md): ``wa-cli recv`` showed a file message before the
text messages its sender had sent before it. The download task wrote the file
message's line as soon as the download finished, without the screen's lock, while
the receive loop was still waiting for the reader to take an earlier line of the
same sender. Here the reader of ``recv``'s stdout takes the first line and then
stops reading until the file is on disk; every line must still come in the order
sent. Real ``wa-cli`` processes, one in-process node on 127.0.0.1."""

from __future__ import annotations

import trio
from cli_procs import Running, lines, wa

from relay.testing import open_local_cluster

DEADLINE = 60
POLL = 0.02  # seconds between looks for the downloaded file


async def test_a_file_message_is_shown_after_what_its_sender_sent_before_it(tmp_path):
    recv = None
    try:
        with trio.fail_after(DEADLINE):
            async with open_local_cluster(1) as cluster:
                url = cluster.urls["n1"]
                (bob,) = lines(await wa(tmp_path / "b", "--json", "init", "--trust-on-first-use",
                                        "--name", "bob", "--relay", url))
                (alice,) = lines(await wa(tmp_path / "a", "--json", "init",
                                          "--trust-on-first-use", "--name", "alice",
                                          "--relay", url))
                await wa(tmp_path / "b", "contacts", "add", "alice", alice["user_id"])
                await wa(tmp_path / "a", "contacts", "add", "bob", bob["user_id"])
                photo = tmp_path / "photo.bin"
                photo.write_bytes(bytes(range(256)) * 64)
                for text in ("t1", "t2", "t3"):
                    await wa(tmp_path / "a", "send", "bob", text)
                await wa(tmp_path / "a", "send", "bob", "--file", str(photo), "f4")
                await wa(tmp_path / "a", "send", "bob", "t5")

                recv = await Running.start(tmp_path / "b", "--json", "recv", "--timeout", "1")
                assert (await recv.json())["text"] == "t1"
                saved = tmp_path / "b" / "downloads" / "photo.bin"
                # recv waits for us to take "t2" meanwhile; a file on disk has no event
                while not saved.exists():  # noqa: ASYNC110 - poll, deadline above
                    await trio.sleep(POLL)
                shown = [(await recv.json()).get("text") for _ in range(4)]
                assert shown == ["t2", "t3", "f4", "t5"], shown
                code, err = await recv.finish()
                assert code == 0, err
    finally:
        if recv is not None:
            await recv.aclose()
