"""File encryption for media: XChaCha20-Poly1305 secretstream (libsodium, via pynacl).

Format of an encrypted file (the "ciphertext" the relays store, addressed by
its SHA-256)::

    header (24 bytes) || m_1 || m_2 || ... || m_n        n >= 1

Each ``m_i`` is one secretstream message: ``PLAIN_CHUNK`` (64 KiB) plaintext
bytes plus 17 bytes (tag + MAC), except ``m_n``, which carries the rest
(possibly 0 bytes) and the ``FINAL`` tag. So the ciphertext size follows from
the plaintext size (:func:`encrypted_size`). Every message is authenticated and
bound to its position; a missing ``FINAL`` (truncation), bytes after it, a
reordered, dropped or altered message all fail decryption. The key is random
per file and travels only inside the end-to-end encrypted message.

Both directions stream with bounded memory (one chunk at a time) and are
blocking: run them in a worker thread (``trio.to_thread.run_sync``).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import nacl.bindings as sodium
import nacl.exceptions

from cli.errors import ClientError

PLAIN_CHUNK = 64 * 1024
HEADER = sodium.crypto_secretstream_xchacha20poly1305_HEADERBYTES
ABYTES = sodium.crypto_secretstream_xchacha20poly1305_ABYTES
KEY_SIZE = sodium.crypto_secretstream_xchacha20poly1305_KEYBYTES
_TAG_FINAL = sodium.crypto_secretstream_xchacha20poly1305_TAG_FINAL
_TAG_MESSAGE = sodium.crypto_secretstream_xchacha20poly1305_TAG_MESSAGE


class IntegrityError(ClientError):
    """A downloaded file is not what the sender encrypted (altered, truncated or
    corrupted on the way or on a relay); nothing was saved."""


@dataclass(frozen=True, slots=True)
class EncryptedFile:
    """The result of :func:`encrypt_file`: ciphertext at ``path``, its ``sha256`` and
    size ``enc_size``; ``size`` plaintext bytes; the fresh 32-byte ``key``."""

    path: Path
    key: bytes
    sha256: bytes
    enc_size: int
    size: int


def encrypted_size(size: int) -> int:
    """Ciphertext bytes for ``size`` plaintext bytes."""
    messages = max(1, -(-size // PLAIN_CHUNK))
    return HEADER + size + messages * ABYTES


def encrypt_file(src: Path, dst: Path) -> EncryptedFile:
    """Encrypt ``src`` into a new file ``dst`` (mode 0600, must not exist) with a fresh key.

    The SHA-256 of the ciphertext is computed while writing (one pass).

    Raises:
        OSError: ``src`` unreadable, ``dst`` exists or cannot be written.
    """
    key = sodium.crypto_secretstream_xchacha20poly1305_keygen()
    state = sodium.crypto_secretstream_xchacha20poly1305_state()
    header = sodium.crypto_secretstream_xchacha20poly1305_init_push(state, key)
    digest = hashlib.sha256(header)
    size = 0
    fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with open(src, "rb") as fin, os.fdopen(fd, "wb") as fout:
        fout.write(header)
        enc_size = len(header)
        current = fin.read(PLAIN_CHUNK)
        while True:
            following = fin.read(PLAIN_CHUNK) if len(current) == PLAIN_CHUNK else b""
            tag = _TAG_MESSAGE if following else _TAG_FINAL
            message = sodium.crypto_secretstream_xchacha20poly1305_push(state, current, tag=tag)
            fout.write(message)
            digest.update(message)
            size += len(current)
            enc_size += len(message)
            if not following:
                break
            current = following
    return EncryptedFile(Path(dst), key, digest.digest(), enc_size, size)


def decrypt_file(src: Path, dst: Path, key: bytes) -> int:
    """Decrypt ciphertext file ``src`` into a new file ``dst`` (mode 0600); return the
    plaintext size. On any failure ``dst`` is removed.

    Raises:
        IntegrityError: bad header, a message that fails authentication, no
            ``FINAL`` message (truncated), or bytes after it.
        OSError: a file cannot be read or written.
    """
    fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    done = False
    try:
        with open(src, "rb") as fin, os.fdopen(fd, "wb") as fout:
            size = _decrypt_stream(fin, fout, key)
            fout.flush()
            os.fsync(fout.fileno())
        done = True
    finally:
        if not done:
            Path(dst).unlink(missing_ok=True)
    return size


def _decrypt_stream(fin, fout, key: bytes) -> int:  # noqa: ANN001 - binary file objects
    if len(key) != KEY_SIZE:
        raise IntegrityError("the file key has the wrong length")
    header = fin.read(HEADER)
    if len(header) != HEADER:
        raise IntegrityError("the encrypted file is truncated (no header)")
    state = sodium.crypto_secretstream_xchacha20poly1305_state()
    sodium.crypto_secretstream_xchacha20poly1305_init_pull(state, header, key)
    size = 0
    while True:
        message = fin.read(PLAIN_CHUNK + ABYTES)
        if len(message) < ABYTES:
            raise IntegrityError("the encrypted file is truncated (its final chunk is missing)")
        try:
            plain, tag = sodium.crypto_secretstream_xchacha20poly1305_pull(state, message)
        except nacl.exceptions.CryptoError as exc:
            raise IntegrityError(
                f"chunk at plaintext offset {size} failed authentication: the file was "
                "altered or corrupted") from exc
        fout.write(plain)
        size += len(plain)
        if tag == _TAG_FINAL:
            if fin.read(1):
                raise IntegrityError("the encrypted file has data after its final chunk")
            return size
        if len(message) < PLAIN_CHUNK + ABYTES:
            raise IntegrityError("the encrypted file is truncated (its final chunk is missing)")
