"""Files end to end: ``wa-cli send NAME --file PATH`` and ``wa-cli recv --downloads DIR``
as subprocesses against ``wa-relay serve`` nodes; sender and recipient on different
homes, so every download is forwarded by the recipient's home to the sender's."""

from __future__ import annotations

import hashlib
import json
import os
import re
import uuid
from pathlib import Path

from .devices import Device, alice_and_bob, home_node
from .procs import HarnessError, find_markers

K, M = 1024, 1024 * 1024
SIZES = [0, 1, 256 * K - 1, 256 * K, 256 * K + 1, 20 * M]


def _status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise HarnessError(f"no {field} for pid {pid}")


def send_file(device: Device, to: str, path: Path, caption: str | None = None) -> dict:
    args = ["send", to, "--file", str(path)] + ([caption] if caption is not None else [])
    return device.json_one(*args)


def recv_files(device: Device, downloads: Path, check: bool = True):
    run = device.run("recv", "--timeout", "1", "--downloads", str(downloads), check=check)
    rows = [json.loads(line) for line in run.stdout.decode().splitlines() if line.strip()]
    return run, rows


def test_files_round_trip_bit_exact(cluster, tmp_path):
    alice, bob = alice_and_bob(cluster, tmp_path)
    holder = cluster.node(home_node(cluster, alice))
    hwm_before = _status_kib(holder.pid, "VmHWM")
    src = tmp_path / "src"
    src.mkdir()
    digests = {}
    for size in SIZES:
        path = src / f"file-{size}.bin"
        path.write_bytes(os.urandom(size))
        digests[path.name] = hashlib.sha256(path.read_bytes()).hexdigest()
        out = send_file(alice, "bob", path, f"size {size}")
        assert out["status"] == "stored" and out["to"] == bob.user_id
        assert out["file"] == {"name": path.name, "size": size,
                               "mime": "application/octet-stream"}
    photo = src / "photo.jpg"
    photo.write_bytes(b"\xff\xd8 not really a jpeg")
    send_file(alice, "bob", photo)
    send_file(alice, "bob", photo, "the same name again")

    downloads = tmp_path / "downloads"
    run, rows = recv_files(bob, downloads)
    assert [r["type"] for r in rows] == ["file"] * (len(SIZES) + 2)
    for row, size in zip(rows, SIZES, strict=False):
        assert row["text"] == f"size {size}" and row["from"] == alice.user_id
        assert row["direction"] == "in"
        f = row["file"]
        assert set(f) == {"name", "size", "mime", "path"}
        assert (f["name"], f["size"]) == (f"file-{size}.bin", size)
        saved = Path(f["path"])
        assert saved.parent == downloads and saved.name == f["name"]
        assert hashlib.sha256(saved.read_bytes()).hexdigest() == digests[saved.name]
    first, second = rows[-2]["file"], rows[-1]["file"]
    assert (rows[-2]["text"], rows[-1]["text"]) == ("", "the same name again")
    assert first["mime"] == second["mime"] == "image/jpeg"
    assert Path(first["path"]).name == "photo.jpg"
    assert Path(second["path"]).name == "photo (1).jpg"  # never overwritten
    assert Path(second["path"]).read_bytes() == photo.read_bytes()
    assert sorted(p.name for p in downloads.iterdir()) == sorted(
        [f"file-{s}.bin" for s in SIZES] + ["photo.jpg", "photo (1).jpg"])
    assert list((bob.home / "media").iterdir()) == []  # no temporary ciphertext left
    assert recv_files(bob, downloads)[1] == []  # delivered once
    # 20 MiB went through the holding node chunk by chunk: its peak RSS barely moved
    growth = _status_kib(holder.pid, "VmHWM") - hwm_before
    assert growth < 64 * 1024, f"node peak RSS grew by {growth} KiB"
    cluster.assert_running()
    cluster.assert_clean_logs()


def test_tampered_chunk_is_an_integrity_error_and_saves_nothing(cluster, tmp_path):
    alice, bob = alice_and_bob(cluster, tmp_path)
    path = tmp_path / "report.pdf"
    path.write_bytes(os.urandom(700 * K))
    send_file(alice, "bob", path)
    media_dir = cluster.data / home_node(cluster, alice) / "data" / "media"
    (blob,) = list(media_dir.iterdir())
    raw = bytearray(blob.read_bytes())
    raw[400 * K] ^= 0x80  # one bit of the second stored chunk
    blob.write_bytes(bytes(raw))

    downloads = tmp_path / "downloads"
    run, rows = recv_files(bob, downloads, check=False)
    assert run.returncode == 1
    err = run.stderr.decode()
    assert "report.pdf" in err and "SHA-256" in err and "nothing was saved" in err
    row, error = rows  # --json: the error as a JSON object on stdout too
    assert "SHA-256" in error["error"]["message"] and error["error"]["code"] == "failed"
    assert row["file"]["path"] is None and "SHA-256" in row["file"]["error"]
    assert not downloads.exists() or list(downloads.iterdir()) == []
    assert list((bob.home / "media").iterdir()) == []
    run, rows = recv_files(bob, downloads)  # recorded as failed: not retried, not shown again
    assert rows == []
    cluster.assert_clean_logs()


def test_relays_never_hold_the_plaintext(cluster, tmp_path):
    alice, bob = alice_and_bob(cluster, tmp_path)
    marker = f"MEDIA-PLAINTEXT-MARKER-{uuid.uuid4().hex}"
    name = f"secret-name-{uuid.uuid4().hex}.txt"
    path = tmp_path / name
    path.write_text((marker + " some text\n") * 30_000)  # ~1.5 MiB, the marker everywhere
    send_file(alice, "bob", path, "caption")
    pending = find_markers(cluster.relay_files(), [marker, name])
    assert pending == {}, f"plaintext on a relay while pending: {pending}"
    _, (row,) = recv_files(bob, tmp_path / "downloads")
    saved = Path(row["file"]["path"])
    assert set(find_markers([saved], [marker])) == {marker}  # positive control
    cluster.close()
    files = list(cluster.relay_files())
    assert any(p.parent.name == "media" for p in files), "no media blob on any relay"
    found = find_markers(files, [marker, name])
    assert found == {}, f"plaintext found in relay files: {found}"


def test_quota_answers_storage_full(cluster, tmp_path):
    alice, bob = alice_and_bob(cluster, tmp_path)
    home = home_node(cluster, alice)
    config = cluster.node(home).config
    # generated files hold every setting with its value: replace the line
    config.write_text(re.sub(r"(?m)^media_quota = .*$", "media_quota = 1048576",
                             config.read_text()))
    cluster.stop(home)
    cluster.restart(home)
    small, big = tmp_path / "small.bin", tmp_path / "big.bin"
    small.write_bytes(os.urandom(600 * K))
    big.write_bytes(os.urandom(600 * K))
    assert send_file(alice, "bob", small)["status"] == "stored"
    run = alice.run("send", "bob", "--file", str(big), check=False)
    assert run.returncode == 1
    assert "storage_full" in run.stderr.decode()
    _, rows = recv_files(bob, tmp_path / "downloads")
    assert [r["file"]["name"] for r in rows] == ["small.bin"]
    cluster.assert_clean_logs()


def test_group_file(cluster, tmp_path):
    alice, bob = alice_and_bob(cluster, tmp_path)
    alice.json_one("group", "create", "team", "bob")
    recv_files(bob, tmp_path / "downloads")  # bob learns the group
    path = tmp_path / "slides.pdf"
    path.write_bytes(os.urandom(700 * K))
    out = alice.json_one("send", "--group", "team", "--file", str(path), "the deck")
    assert (out["status"], out["group"]) == ("stored", "team")
    assert out["file"] == {"name": "slides.pdf", "size": 700 * K, "mime": "application/pdf"}
    _, (row,) = recv_files(bob, tmp_path / "downloads")
    assert (row["type"], row["text"], row["group"]) == ("file", "the deck", "team")
    assert Path(row["file"]["path"]).read_bytes() == path.read_bytes()
    cluster.assert_clean_logs()


def test_a_file_keeps_its_place_among_its_senders_messages(cluster, tmp_path):
    """Fault-suite finding 8: `recv` shows a file message once downloaded; the texts its
    sender wrote after it must not be shown before it (order per sending device)."""
    alice, bob = alice_and_bob(cluster, tmp_path)
    path = tmp_path / "big.bin"
    path.write_bytes(os.urandom(3 * M))  # a download of 12 chunks, forwarded by bob's home
    alice.send("bob", "before the file")
    assert send_file(alice, "bob", path, "the file")["status"] == "stored"
    for i in range(3):
        alice.send("bob", f"after the file {i}")
    run, rows = recv_files(bob, tmp_path / "downloads")
    shown = [r.get("text") if r["type"] != "file" else "<file>" for r in rows
             if r.get("from") == alice.user_id]
    assert shown == ["before the file", "<file>"] + [f"after the file {i}" for i in range(3)]
