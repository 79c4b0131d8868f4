"""Client-side media pieces without a network: the file encryption format, integrity
failures, attachment fields, file payloads, safe and unique file names."""

from __future__ import annotations

import errno
import hashlib
import os

import msgpack
import pytest

from cli.features import payload
from cli.features.attachment import Attachment, AttachmentError, safe_name
from cli.features.media import claim_name
from cli.features.mediacrypt import (
    ABYTES,
    HEADER,
    PLAIN_CHUNK,
    IntegrityError,
    decrypt_file,
    encrypt_file,
    encrypted_size,
)

K = 1024
SIZES = [0, 1, PLAIN_CHUNK - 1, PLAIN_CHUNK, PLAIN_CHUNK + 1, 256 * K - 1, 256 * K, 256 * K + 1,
         3 * PLAIN_CHUNK + 5]


def write(path, data: bytes):
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("size", SIZES)
def test_encrypt_decrypt_round_trip(tmp_path, size):
    data = os.urandom(size)
    enc = encrypt_file(write(tmp_path / "plain", data), tmp_path / "enc")
    raw = (tmp_path / "enc").read_bytes()
    assert enc.size == size
    assert enc.enc_size == len(raw) == encrypted_size(size)
    assert enc.sha256 == hashlib.sha256(raw).digest()
    assert len(enc.key) == 32
    assert decrypt_file(tmp_path / "enc", tmp_path / "out", enc.key) == size
    assert (tmp_path / "out").read_bytes() == data
    assert oct((tmp_path / "out").stat().st_mode & 0o777) == oct(0o600)


def test_fresh_key_and_nonce_per_file(tmp_path):
    src = write(tmp_path / "plain", b"same content" * 100)
    a = encrypt_file(src, tmp_path / "a")
    b = encrypt_file(src, tmp_path / "b")
    assert a.key != b.key and a.sha256 != b.sha256
    assert b"same content" not in (tmp_path / "a").read_bytes()


def _enc(tmp_path, size=3 * PLAIN_CHUNK + 100):
    data = os.urandom(size)
    enc = encrypt_file(write(tmp_path / "plain", data), tmp_path / "enc")
    return enc, (tmp_path / "enc").read_bytes()


def _fails(tmp_path, raw: bytes, key: bytes, match: str) -> None:
    bad = write(tmp_path / "bad", raw)
    out = tmp_path / "out"
    with pytest.raises(IntegrityError, match=match):
        decrypt_file(bad, out, key)
    assert not out.exists()  # partial plaintext removed


@pytest.mark.parametrize("where", [0, HEADER, HEADER + 5, HEADER + PLAIN_CHUNK + ABYTES + 9, -1])
def test_any_flipped_byte_fails(tmp_path, where):
    enc, raw = _enc(tmp_path)
    tampered = bytearray(raw)
    tampered[where] ^= 0x40
    _fails(tmp_path, bytes(tampered), enc.key, "authentication|altered")


def test_truncation_reorder_trailing_and_wrong_key(tmp_path):
    enc, raw = _enc(tmp_path)
    m = PLAIN_CHUNK + ABYTES
    _fails(tmp_path, raw[:HEADER + 2 * m], enc.key, "truncated")  # whole messages dropped
    _fails(tmp_path, raw[:-1], enc.key, "authentication|truncated")
    _fails(tmp_path, raw[:HEADER - 1], enc.key, "truncated")
    swapped = raw[:HEADER] + raw[HEADER + m:HEADER + 2 * m] + raw[HEADER:HEADER + m] + raw[HEADER + 2 * m:]
    _fails(tmp_path, swapped, enc.key, "authentication")
    _fails(tmp_path, raw + b"\x00" * 20, enc.key, "after its final chunk|authentication")
    _fails(tmp_path, raw, os.urandom(32), "authentication")


def test_final_chunk_then_extra_bytes(tmp_path):
    data = b"x" * PLAIN_CHUNK  # the final message is a full one: extra bytes come after it
    enc = encrypt_file(write(tmp_path / "p", data), tmp_path / "e")
    raw = (tmp_path / "e").read_bytes()
    _fails(tmp_path, raw + b"more", enc.key, "after its final chunk")


def _att(**kw) -> Attachment:
    base = dict(node_id="n1", media_id=b"m" * 32, enc_size=100, key=b"k" * 32, sha256=b"s" * 32,
                size=40, name="photo.jpg", mime="image/jpeg")
    base.update(kw)
    return Attachment(**base)


def test_attachment_map_round_trip_and_validation():
    att = _att()
    m = att.to_map()
    assert m["ref"] == {"node_id": "n1", "media_id": b"m" * 32, "size": 100}
    assert Attachment.from_map(m) == att
    for broken in ({**m, "key": b"short"}, {**m, "ref": {**m["ref"], "media_id": b"x"}},
                   {**m, "size": 101}, {**m, "sha256": "text"}, {k: v for k, v in m.items()
                                                                 if k != "ref"}):
        with pytest.raises(AttachmentError):
            Attachment.from_map(broken)


def test_file_payload_round_trip_and_history():
    att = _att()
    p = payload.FilePayload(os.urandom(16), "a caption", 123, "alice", "bob-id", att)
    back = payload.decode(p.encode())
    assert back == p and back.type == "file"
    fields = payload.history_fields(back)
    assert fields["type"] == "file" and fields["text"] == "a caption"
    assert fields["file"]["path"] is None and fields["file"]["name"] == "photo.jpg"
    entry = {"text": "a caption", "ts": 123, "from_name": "alice", "peer": "bob-id", **fields}
    assert payload.from_history(p.msg_id, entry) == p
    text = payload.TextPayload(os.urandom(16), "hi", 1, "a", "b")
    assert payload.history_fields(text) == {"type": "text", "text": "hi"}
    broken = payload.decode(p.encode()).attachment.to_map()
    broken["key"] = b"short"
    raw = msgpack.unpackb(p.encode())
    raw.update(broken)
    with pytest.raises(payload.PayloadError):
        payload.decode(msgpack.packb(raw))


@pytest.mark.parametrize(("given", "safe"), [
    ("report.pdf", "report.pdf"),
    ("../../etc/passwd", "passwd"),
    ("C:\\Users\\x\\evil.exe", "evil.exe"),
    (".bashrc", "bashrc"),
    ("..", "file"),
    ("", "file"),
    ("a\x00b\nc\u202e.txt", "abc.txt"),
    ("x" * 300 + ".tar", "x" * 196 + ".tar"),
])
def test_safe_name(given, safe):
    assert safe_name(given) == safe


def test_claim_name_never_overwrites(tmp_path):
    (tmp_path / "photo.jpg").write_bytes(b"old")
    (tmp_path / "photo (1).jpg").write_bytes(b"older")
    made = []
    for content in (b"new1", b"new2"):
        tmp = write(tmp_path / f".tmp-{content.decode()}", content)
        made.append(claim_name(tmp, tmp_path, "photo.jpg"))
        assert not tmp.exists()
    assert [p.name for p in made] == ["photo (2).jpg", "photo (3).jpg"]
    assert (tmp_path / "photo.jpg").read_bytes() == b"old"
    assert (tmp_path / "photo (1).jpg").read_bytes() == b"older"
    assert made[1].read_bytes() == b"new2"
    tmp = write(tmp_path / ".t", b"z")
    assert claim_name(tmp, tmp_path, "README").name == "README"


def test_claim_name_without_hard_links(tmp_path, monkeypatch):
    def no_links(src, dst):
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_links)
    (tmp_path / "a.txt").write_bytes(b"old")
    tmp = write(tmp_path / ".t", b"new")
    target = claim_name(tmp, tmp_path, "a.txt")
    assert target.name == "a (1).txt" and target.read_bytes() == b"new" and not tmp.exists()
    assert (tmp_path / "a.txt").read_bytes() == b"old"
