"""Files through real relay nodes (in-process, LMDB storage on disk, loopback): round
trips forwarded between homes, tampering, no plaintext on the relays, resumed
uploads (dropped connection) and downloads (holding node restarted), quota, a group file."""

from __future__ import annotations

import hashlib
import os
from contextlib import ExitStack
from pathlib import Path

import pytest
import trio
from cli_cluster import new_account, publish

from cli.client import BacklogDone, Message, now_ms, open_client
from cli.errors import RelayError
from cli.features import media
from cli.features.group_messaging import create_group, send_group
from cli.features.payload import FilePayload
from relay.net.backoff import Backoff
from relay.testing import LocalCluster, open_local_cluster

K, M = 1024, 1024 * 1024
DEADLINE = 60


def disk_cluster(root: Path, n: int = 2, **overrides):
    """In-process nodes n1..nN on LMDB under ``root``; each can be stopped and restarted."""
    return open_local_cluster(n, storage="lmdb", data_dir=root, **overrides)


async def account(tmp_path: Path, name: str, cluster: LocalCluster, stack: ExitStack,
                  home: str):
    """A published account homed at ``home``."""
    for i in range(60):
        state = new_account(tmp_path / "homes", f"{name}-{i}", cluster.urls[home], stack)
        if cluster.home_of(state.user_id) == home:
            state.name = name
            await publish(state)
            return state
    raise AssertionError(f"no account for {name} landed on {home}")


def content(path: str | Path) -> bytes:
    """The bytes of a file (tests read small local files on the loop)."""
    return Path(path).read_bytes()


def pattern(size: int, marker: bytes = b"") -> bytes:
    """Deterministic content of ``size`` bytes, with ``marker`` repeated through it."""
    block = marker + hashlib.sha256(b"%d" % size).digest() * 8
    return (block * (size // len(block) + 1))[:size]


async def send(sender, to_user: str, path: Path, caption: str = "", progress=None):
    async with media.Reconnecting(sender, backoff=Backoff(0.05, 0.05)) as rc:
        att = await media.upload_file(rc, path, **({"progress": progress} if progress else {}))
        result = await media.send_file(rc, to_user, att, caption, source=str(path))
    assert result.status == "stored"
    return att


async def receive_files(receiver, downloads: Path, count: int) -> list[dict]:
    """Receive ``count`` file messages; return each one's file info (downloaded)."""
    infos: list[dict] = []
    async with open_client(receiver) as client:
        async for event in client.receive():
            if isinstance(event, Message) and event.type == "file":
                entry = receiver.find_history(event.msg_id.hex())
                infos.append(await media.fetch_history_file(client, entry, downloads))
                await receiver.asave()
                if len(infos) == count:
                    return infos
            elif isinstance(event, BacklogDone) and len(infos) == count:
                return infos
    raise AssertionError("receive ended early")


SIZES = [0, 1, 256 * K - 1, 256 * K, 256 * K + 1, 20 * M]


async def test_round_trip_bit_exact_across_homes(tmp_path):
    files = tmp_path / "files"
    files.mkdir()
    with trio.fail_after(DEADLINE), ExitStack() as stack:
        async with disk_cluster(tmp_path / "nodes") as cluster:
            alice = await account(tmp_path, "alice", cluster, stack, "n1")
            bob = await account(tmp_path, "bob", cluster, stack, "n2")
            sent = {}
            for size in SIZES:
                path = files / f"f{size}.bin"
                path.write_bytes(os.urandom(size))
                att = await send(alice, bob.user_id, path, caption=f"size {size}")
                assert (att.node_id, att.size, att.name) == ("n1", size, path.name)
                assert att.mime == "application/octet-stream"
                sent[path.name] = path.read_bytes()
            downloads = tmp_path / "downloads"
            infos = await receive_files(bob, downloads, len(SIZES))
            assert [i["name"] for i in infos] == [f"f{s}.bin" for s in SIZES]
            for info in infos:
                assert "error" not in info
                saved = Path(info["path"])
                assert saved.parent == downloads and saved.name == info["name"]
                assert content(saved) == sent[info["name"]], info["name"]
                assert info["size"] == len(sent[info["name"]])
            # temporary ciphertexts are gone on both sides
            assert list((alice.home / media.MEDIA_DIR).iterdir()) == []
            assert list((bob.home / media.MEDIA_DIR).iterdir()) == []
            # the blobs live at alice's home only; n2 forwarded every download chunk
            assert len(list((cluster.data_dir("n1") / "media").iterdir())) == len(SIZES)
            assert not (cluster.data_dir("n2") / "media").exists() or not list(
                (cluster.data_dir("n2") / "media").iterdir())


async def test_tampered_blob_gives_integrity_error_and_no_file(tmp_path):
    path = tmp_path / "secret.txt"
    path.write_bytes(pattern(600 * K))
    with trio.fail_after(DEADLINE), ExitStack() as stack:
        async with disk_cluster(tmp_path / "nodes") as cluster:
            alice = await account(tmp_path, "alice", cluster, stack, "n1")
            bob = await account(tmp_path, "bob", cluster, stack, "n2")
            att = await send(alice, bob.user_id, path)
            blob = cluster.data_dir("n1") / "media" / att.media_id.hex()
            raw = bytearray(blob.read_bytes())
            raw[300 * K] ^= 0x01  # one bit of one ciphertext chunk, in the relay's storage
            blob.write_bytes(bytes(raw))
            downloads = tmp_path / "downloads"
            (info,) = await receive_files(bob, downloads, 1)
            assert info["path"] is None
            assert "SHA-256" in info["error"] and "nothing was saved" in info["error"]
            assert not downloads.exists() or list(downloads.iterdir()) == []
            assert list((bob.home / media.MEDIA_DIR).iterdir()) == []  # partial data deleted
            entry = next(e for e in bob.history if e.get("type") == "file")
            assert entry["file"]["error"] == info["error"]  # recorded: not retried forever
            assert media.pending_files(bob) == []


async def test_relay_storage_never_holds_plaintext(tmp_path):
    marker = b"PLAINTEXT-MEDIA-MARKER-" + os.urandom(8).hex().encode()
    path = tmp_path / "notes.txt"
    path.write_bytes(pattern(700 * K, marker))
    assert path.read_bytes().count(marker) > 100
    with trio.fail_after(DEADLINE), ExitStack() as stack:
        async with disk_cluster(tmp_path / "nodes") as cluster:
            alice = await account(tmp_path, "alice", cluster, stack, "n1")
            bob = await account(tmp_path, "bob", cluster, stack, "n2")
            await send(alice, bob.user_id, path, caption="see notes")
            (info,) = await receive_files(bob, tmp_path / "downloads", 1)
            assert marker in content(info["path"])  # positive control
    relay_files = [p for p in (tmp_path / "nodes").rglob("*") if p.is_file()]
    assert any(p.parent.name == "media" for p in relay_files)
    for p in relay_files:
        assert marker not in p.read_bytes(), p
        assert b"notes.txt" not in p.read_bytes(), p  # nor the file name


async def test_upload_resumes_after_a_dropped_connection(tmp_path):
    path = tmp_path / "big.bin"
    path.write_bytes(os.urandom(6 * M))
    with trio.fail_after(DEADLINE), ExitStack() as stack:
        async with disk_cluster(tmp_path / "nodes") as cluster:
            alice = await account(tmp_path, "alice", cluster, stack, "n1")
            bob = await account(tmp_path, "bob", cluster, stack, "n2")
            seen: list[int] = []
            async with trio.open_nursery() as nursery, media.Reconnecting(
                    alice, backoff=Backoff(0.05, 0.05)) as rc:
                first = await rc.client()

                def progress(done: int, total: int) -> None:
                    seen.append(done)
                    if done >= 2 * M and len(seen) < 20:  # once, mid-upload: drop the socket
                        nursery.start_soon(first.connection.aclose)

                att = await media.upload_file(rc, path, progress=progress)
                assert await rc.client() is not first  # it reconnected ...
                result = await media.send_file(rc, bob.user_id, att)
                assert result.status == "stored"
            # ... and each attempt reported the offset it started from: 0, then what n1 had
            restarts = [b for a, b in zip(seen, seen[1:], strict=False) if b <= a]
            assert seen[0] == 0 and len(restarts) == 1 and restarts[0] >= 2 * M, seen
            assert seen[-1] == att.enc_size
            (info,) = await receive_files(bob, tmp_path / "downloads", 1)
            assert content(info["path"]) == content(path)


async def test_download_resumes_after_an_interruption(tmp_path):
    path = tmp_path / "big.bin"
    path.write_bytes(os.urandom(5 * M))
    downloads = tmp_path / "downloads"
    with trio.fail_after(DEADLINE), ExitStack() as stack:
        async with disk_cluster(tmp_path / "nodes") as cluster:
            alice = await account(tmp_path, "alice", cluster, stack, "n1")
            bob = await account(tmp_path, "bob", cluster, stack, "n2")
            att = await send(alice, bob.user_id, path)
            seen: list[int] = []

            def stop_holder(done: int, total: int) -> None:
                seen.append(done)
                if done >= 2 * M and cluster.running("n1"):
                    cluster.stop("n1")  # the node holding the blob goes away mid-download

            async with open_client(bob) as client:
                async for event in client.receive():
                    if isinstance(event, Message):
                        entry = bob.find_history(event.msg_id.hex())
                        with pytest.raises(RelayError) as exc:
                            await media.save_attachment(
                                client, media.Attachment.from_map(entry["file"]), downloads,
                                state_home=bob.home, progress=stop_holder)
                        assert exc.value.code == "unavailable"
                        break
            part = bob.home / media.MEDIA_DIR / f"{att.media_id.hex()}.part"
            kept = part.stat().st_size
            assert kept >= 2 * M
            assert not downloads.exists() or list(downloads.iterdir()) == []
            await cluster.start("n1")
            assert [e["id"] for e in media.pending_files(bob)] == [entry["id"]]
            resumed: list[int] = []
            async with open_client(bob) as client:
                info = await media.fetch_history_file(
                    client, entry, downloads, progress=lambda d, t: resumed.append(d))
            assert resumed[0] == kept  # continued where it stopped
            assert content(info["path"]) == content(path)
            assert not part.exists()
            assert media.pending_files(bob) == []


async def test_quota_is_storage_full(tmp_path):
    small, big = tmp_path / "small.bin", tmp_path / "big.bin"
    small.write_bytes(os.urandom(300 * K))
    big.write_bytes(os.urandom(300 * K))
    with trio.fail_after(DEADLINE), ExitStack() as stack:
        async with disk_cluster(tmp_path / "nodes", n=1, media_quota=500 * K) as cluster:
            alice = await account(tmp_path, "alice", cluster, stack, "n1")
            bob = await account(tmp_path, "bob", cluster, stack, "n1")
            await send(alice, bob.user_id, small)
            with pytest.raises(RelayError) as exc:
                await send(alice, bob.user_id, big)
            assert exc.value.code == "storage_full"
            assert list((alice.home / media.MEDIA_DIR).iterdir()) == []
            assert len(list((cluster.data_dir("n1") / "media").iterdir())) == 1


async def test_group_file(tmp_path):
    path = tmp_path / "slides.pdf"
    path.write_bytes(os.urandom(300 * K))
    with trio.fail_after(DEADLINE), ExitStack() as stack:
        async with disk_cluster(tmp_path / "nodes") as cluster:
            alice = await account(tmp_path, "alice", cluster, stack, "n1")
            bob = await account(tmp_path, "bob", cluster, stack, "n2")
            async with open_client(alice) as client:
                made = await create_group(client, "team", [bob.user_id])
            async with open_client(bob) as client:  # bob learns the group
                async for event in client.receive():
                    if isinstance(event, BacklogDone):
                        break
            async with media.Reconnecting(alice) as rc:
                att = await media.upload_file(rc, path)
                p = FilePayload(os.urandom(16), "for the meeting", now_ms(), alice.name,
                                made.group_id.hex(), att)
                result = await send_group(await rc.client(), "team", p)
            assert result.status == "stored"
            async with open_client(bob) as client:
                async for event in client.receive():
                    if isinstance(event, Message):
                        assert (event.type, event.text, event.group) == (
                            "file", "for the meeting", "team")
                        entry = bob.find_history(event.msg_id.hex())
                        info = await media.fetch_history_file(client, entry, tmp_path / "dl")
                        break
            assert info["mime"] == "application/pdf"
            assert content(info["path"]) == content(path)
