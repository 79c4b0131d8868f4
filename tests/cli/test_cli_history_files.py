"""File messages in ``wa-cli history`` (name, size, mime, where saved) and in the history
a newly linked device gets: the attachment but never the primary's local path; the new
device fetches the file itself with ``history --download`` while the relay has it."""

from __future__ import annotations

import json
from contextlib import ExitStack
from pathlib import Path

import cli_procs
import trio
from cli_cluster import new_account, publish, run_cluster

from cli.client import open_client
from cli.features import media
from cli.features.linkcode import clean_history_entry, recent_history
from cli.features.linking import link_device
from cli.session.state import open_state

DEADLINE = 60
ALICE = "a" * 52
BOB = "b" * 52
ATTACHMENT = {"ref": {"node_id": "n1", "media_id": b"\x01" * 32, "size": 120},
              "key": b"\x02" * 32, "sha256": b"\x03" * 32, "size": 100,
              "name": "cat.png", "mime": "image/png"}


def _file_entry(**file_extra) -> dict:
    return {"id": "0f" * 16, "direction": "in", "peer": BOB, "from": BOB, "from_device": 0,
            "ts": 1, "type": "file", "text": "look", "from_name": "bob", "resends": 0,
            "file": {**ATTACHMENT, **file_extra}}


def test_linked_history_keeps_the_attachment_but_not_the_local_path():
    cleaned = clean_history_entry(_file_entry(path="/home/alice/downloads/cat.png",
                                              error="old error"))
    assert cleaned["file"] == {**ATTACHMENT, "path": None, "imported": True}
    assert cleaned["text"] == "look" and cleaned["type"] == "file"
    assert "/home/alice" not in json.dumps(cleaned, default=str)
    broken = _file_entry()
    broken["file"]["key"] = "not bytes"
    assert "file" not in clean_history_entry(broken)  # a plain message without the file


def test_linked_history_keeps_group_messages():
    group_id = "ab" * 16
    entry = {**_file_entry(), "type": "text", "peer": group_id, "group_id": group_id}
    del entry["file"]
    assert clean_history_entry(entry)["group_id"] == group_id
    assert clean_history_entry({**entry, "group_id": "cd" * 16}) is None  # peer must match
    assert len(recent_history([entry, {"id": "x"}])) == 1


def test_imported_files_are_not_fetched_by_recv(tmp_path):
    from cli.session.state import create_state

    with create_state(tmp_path / "h", name="x", relay_url="ws://127.0.0.1:1") as state:
        state.history.append(clean_history_entry(_file_entry(path="/p")))
        state.history.append(_file_entry())
        state.history[-1]["id"] = "1f" * 16
        assert [e["id"] for e in media.pending_files(state)] == ["1f" * 16]


async def _wa(home: Path, *args: str) -> list[dict]:
    proc = await cli_procs.wa(home, "--json", *args)
    return [json.loads(line) for line in proc.stdout.decode().splitlines() if line.strip()]


async def test_history_shows_files_and_a_linked_device_downloads_them(tmp_path):
    source = tmp_path / "photo.jpg"
    source.write_bytes(b"\xff\xd8" + bytes(range(256)) * 40)
    size = source.stat().st_size
    with trio.fail_after(DEADLINE):
        async with run_cluster(2) as cluster:
            with ExitStack() as stack:
                alice = new_account(tmp_path, "alice", cluster.urls["n1"], stack)
                bob = new_account(tmp_path, "bob", cluster.urls["n1"], stack)
                await publish(bob)
                async with media.Reconnecting(alice) as rc:
                    att = await media.upload_file(rc, source)
                    await media.send_file(rc, bob.user_id, att, "a photo", source=str(source))
                async with open_client(alice) as client:
                    await link_device(client, tmp_path / "laptop", "laptop", history=True)
            # the homes are released: wa-cli processes can open them

            (row,) = await _wa(tmp_path / "alice", "history")  # the primary: where it was sent from
            assert row["type"] == "file" and row["text"] == "a photo"
            assert row["file"] == {"name": "photo.jpg", "size": size, "mime": "image/jpeg",
                                   "path": str(source)}

            with open_state(tmp_path / "laptop") as laptop:
                (entry,) = list(laptop.history)
                assert entry["file"]["path"] is None and entry["file"]["imported"]
                assert str(source) not in json.dumps(entry, default=str)
            (row,) = await _wa(tmp_path / "laptop", "history")
            assert row["file"] == {"name": "photo.jpg", "size": size, "mime": "image/jpeg",
                                   "path": None}
            assert await _wa(tmp_path / "laptop", "recv", "--timeout", "0.2") == []  # not fetched

            (row,) = await _wa(tmp_path / "laptop", "history", "--download")
            saved = Path(row["file"]["path"])
            assert saved.parent == tmp_path / "laptop" / "downloads" and saved.name == "photo.jpg"
            assert await trio.Path(saved).read_bytes() == await trio.Path(source).read_bytes()
            (again,) = await _wa(tmp_path / "laptop", "history")
            assert again["file"]["path"] == str(saved)
