"""Finding 16 (docs/reliability.md): ``wa-cli recv --timeout S`` hung for good when
its idle timeout ran out while the delivery receipts of a batch with a file message
were being sent. The batch was already kept in the device state, but the wait for
its ``Kept`` marker was cancelled, so the download task was never woken for the new
file message, and the end of ``recv`` waited for that download: both waited for
each other. Here the receipt's ``send`` frame is held by a proxy (it stops
forwarding right after it, both ways) for longer than ``--timeout``; after the
heal the file must be downloaded and shown, and ``recv`` must end. Real ``wa-cli``
processes, one in-process node on 127.0.0.1."""

from __future__ import annotations

import trio
from cli_procs import Running, lines, wa

from relay.testing import open_local_cluster
from tests.netproxy import Proxy, frame_type

DEADLINE = 60
IDLE = 6  # recv --timeout
HELD = IDLE + 1.5  # seconds the receipt (and everything after it) is held


async def test_recv_shows_a_file_whose_receipt_outlasted_the_idle_timeout(tmp_path):
    recv = None
    try:
        with trio.fail_after(DEADLINE):
            async with open_local_cluster(1) as cluster, trio.open_nursery() as nursery:
                proxy = Proxy(int(cluster.urls["n1"].rsplit(":", 1)[1]))
                await nursery.start(proxy.serve)
                (bob,) = lines(await wa(tmp_path / "b", "--json", "init", "--trust-on-first-use",
                                        "--name", "bob", "--relay", proxy.url))
                (alice,) = lines(await wa(tmp_path / "a", "--json", "init",
                                          "--trust-on-first-use", "--name", "alice",
                                          "--relay", cluster.urls["n1"]))
                await wa(tmp_path / "b", "contacts", "add", "alice", alice["user_id"])
                await wa(tmp_path / "a", "contacts", "add", "bob", bob["user_id"])
                await wa(tmp_path / "a", "send", "bob", "t0")
                photo = tmp_path / "photo.bin"
                photo.write_bytes(bytes(range(256)) * 64)

                recv = await Running.start(tmp_path / "b", "--json", "recv",
                                           "--timeout", str(IDLE))
                first = await recv.json()
                assert first["text"] == "t0", first  # its receipt went through already
                proxy.blackhole_at(lambda payload: frame_type(payload) == "send")
                (sent,) = lines(await wa(tmp_path / "a", "--json", "send", "bob",
                                         "--file", str(photo)))
                await proxy.holding.wait()  # bob's receipt for the file went in
                await trio.sleep_until(proxy.blackholed_at + HELD)
                proxy.heal()
                shown = await recv.json()
                assert shown["id"] == sent["id"] and shown["type"] == "file", shown
                assert shown["file"]["path"], shown
                code, err = await recv.finish()
                assert code == 0, err
                nursery.cancel_scope.cancel()
    finally:
        if recv is not None:
            await recv.aclose()
