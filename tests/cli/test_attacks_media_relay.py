"""A hostile relay on the download of a received file (:class:`wsmitm.Mitm` between
``wa-cli recv`` and a real node): altered bytes, more bytes than announced, another
size. Expected: the message is shown once with the file's error, nothing is written to
the downloads folder, no partial file is left, and the state still opens (``history``).
Real ``wa-cli`` processes."""

from __future__ import annotations

import cli_procs
import pytest
import trio
from cli_cluster import run_cluster
from wsmitm import Mitm, encode

DEADLINE = 60
BODY = bytes(range(256)) * 600  # 150 KiB: one chunk


def altered(frame):
    data = bytearray(frame["data"])
    data[len(data) // 2] ^= 1
    return {**frame, "data": bytes(data)}


REWRITES = {
    "altered": altered,
    "longer": lambda f: {**f, "data": f["data"] + b"x" * 100},
    "other_size": lambda f: {**f, "size": f["size"] + 1},
    "empty": lambda f: {**f, "data": b""},
}


init = cli_procs.init_account


@pytest.mark.parametrize("attack", sorted(REWRITES))
async def test_a_hostile_download_saves_nothing_and_loses_nothing(tmp_path, attack):
    with trio.fail_after(DEADLINE):
        async with run_cluster(1) as cluster, trio.open_nursery() as nursery:
            mitm = Mitm(cluster.urls["n1"])
            await nursery.start(mitm.serve)
            bob = await init(tmp_path / "bob", "bob", cluster.urls["n1"])
            alice = await init(tmp_path / "alice", "alice", mitm.url)
            await cli_procs.wa(tmp_path / "alice", "contacts", "add", "bob", bob)
            (tmp_path / "photo.bin").write_bytes(BODY)
            await cli_procs.wa(tmp_path / "bob", "send", alice, "--file", tmp_path / "photo.bin")

            rewrite = REWRITES[attack]
            mitm.to_client = lambda frame, raw: (
                [encode(rewrite(frame))] if frame and frame.get("t") == "media_chunk" else [raw])
            with trio.fail_after(20):
                got = await cli_procs.wa(tmp_path / "alice", "--json", "recv", "--timeout",
                                         "0.5", check=False)
            err = got.stderr.decode()
            assert "unexpected error" not in err and "Traceback" not in err
            (row,) = [r for r in cli_procs.lines(got) if r.get("type") == "file"]
            assert row["file"]["path"] is None and row["file"]["error"], row
            downloads = tmp_path / "alice" / "downloads"
            assert not downloads.exists() or list(downloads.iterdir()) == []
            assert list((tmp_path / "alice" / "media").glob("*.part")) == []

            mitm.to_client = lambda frame, raw: [raw]
            again = await cli_procs.wa(tmp_path / "alice", "--json", "recv", "--timeout", "0.3")
            assert [r for r in cli_procs.lines(again) if r.get("type") == "file"] == []
            history = cli_procs.lines(await cli_procs.wa(tmp_path / "alice", "--json", "history"))
            assert [h["file"]["error"] for h in history if h.get("type") == "file"] == [
                row["file"]["error"]]
            nursery.cancel_scope.cancel()
