"""The sealed state file of a device home: storage key, atomic durable writes, process lock.

File layout (``state.bin``): ``b"WAST" || mode || [KDF parameters] || SecretBox``.
Mode 1 keeps a random 32-byte key in ``storage.key`` (mode 0600); mode 2
derives it with Argon2id from a passphrase (salt and cost in the header, no key
file). The passphrase comes from a :data:`Passphrase` source, asked only when a
key is made or a mode-2 file is opened: by default ``WA_PASSPHRASE``
(:func:`env_passphrase`); the command line adds the OS keyring and a prompt
(:mod:`cli.commands._passphrase`). The passphrase itself is never written
anywhere. See :mod:`cli.state` for the threat model.
"""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Generic, TypeVar

import nacl.exceptions
import nacl.secret
import nacl.utils
import trio
from nacl.pwhash import argon2id

STATE_FILE = "state.bin"
KEY_FILE = "storage.key"
LOCK_FILE = "lock"
READERS_FILE = "readers.lock"
MAGIC = b"WAST"
MODE_KEYFILE = 1
MODE_PASSPHRASE = 2
PASSPHRASE_ENV = "WA_PASSPHRASE"
PASSPHRASE_OPSLIMIT = argon2id.OPSLIMIT_MODERATE  # libsodium's "moderate": ~0.5 s, 256 MiB
PASSPHRASE_MEMLIMIT = argon2id.MEMLIMIT_MODERATE

T = TypeVar("T")

Passphrase = Callable[[], "str | None"]
"""A passphrase source: ``source()`` returns the passphrase, or ``None`` if there is
none (key file mode for a new home; an error for a home that needs one). It may
raise :class:`StateError` (e.g. the keyring cannot be read)."""


def env_passphrase() -> str | None:
    """The default :data:`Passphrase` source: ``WA_PASSPHRASE`` if set and not empty."""
    return os.environ.get(PASSPHRASE_ENV) or None


class StateError(Exception):
    """Base error of the device store (:mod:`cli.vault`, :mod:`cli.state`); user-facing message."""


class StateLocked(StateError):
    """Another process holds the home's lock."""


def write_atomic(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Replace ``path`` with ``data`` atomically and durably (tmp file, fsync, rename, fsync dir)."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


class GroupCommit(Generic[T]):
    """Durable writes where concurrent callers share one snapshot and one write.

    :meth:`write` returns once a snapshot taken *at or after* its call is durable.
    One write runs at a time, led by a caller: the leader takes the snapshot (on the
    event loop, so it sees every change made before it), writes it in a worker
    thread, then wakes the callers waiting meanwhile; a caller whose request came
    before that snapshot returns, the others elect the next leader, whose single
    snapshot covers all of them. So N concurrent callers cost about two snapshots
    and two writes, not N, and a later state is never overwritten by an older one.
    No background task: a write happens only while some caller awaits it.

    Args:
        snapshot: captures what to write (called on the event loop).
        write: makes a snapshot durable (called in a worker thread, one at a time;
            must not touch what the event loop changes).
        written: called on the event loop after ``write`` succeeded.

    Attributes:
        writes: durable writes done so far (each may cover many :meth:`write` calls).
    """

    def __init__(self, snapshot: Callable[[], T], write: Callable[[T], None],
                 written: Callable[[T], None]) -> None:
        self._snapshot = snapshot
        self._write = write
        self._written_cb = written
        self._requested = 0  # generation of the newest write() call
        self._durable = 0  # every call up to this generation is on disk
        self._writing = False
        self._written = trio.Event()
        self.writes = 0

    async def write(self) -> None:
        """Wait until a snapshot taken after this call is durable (leading a write if
        none is running).

        Cancellation: a waiting caller leaves at once; a leading caller's thread always
        finishes its write (the thread is not abandoned), then the cancellation applies.

        Raises:
            OSError: the write this caller led failed (full disk, ...). Callers it
                would have covered try again themselves.
        """
        self._requested += 1
        mine = self._requested
        while self._durable < mine:
            if self._writing:
                await self._written.wait()
                continue
            self._writing = True
            try:
                upto = self._requested
                snap = self._snapshot()
                await trio.to_thread.run_sync(self._write, snap)
                self._done(upto, snap)
            finally:
                self._writing = False
                self._written.set()
                self._written = trio.Event()

    def write_blocking(self) -> None:
        """Snapshot and write now, blocking (on the calling thread).

        Raises:
            RuntimeError: a :meth:`write` is in progress (its older snapshot could land
                after this one).
            OSError: the write failed.
        """
        if self._writing:
            raise RuntimeError("blocking write while an async write runs")
        upto = self._requested
        snap = self._snapshot()
        self._write(snap)
        self._done(upto, snap)

    def _done(self, upto: int, snap: T) -> None:
        self._durable = max(self._durable, upto)
        self.writes += 1
        self._written_cb(snap)


def passphrase_key(passphrase: str, salt: bytes, ops: int, mem: int) -> bytes:
    """Argon2id (pynacl) of ``passphrase`` into a 32-byte SecretBox key."""
    return argon2id.kdf(nacl.secret.SecretBox.KEY_SIZE, passphrase.encode(), salt,
                        opslimit=ops, memlimit=mem)


def new_key(home: Path, passphrase_source: Passphrase = env_passphrase) -> tuple[bytes, bytes]:
    """A new storage key for ``home`` and the file header naming how to get it again.

    Derives it from ``passphrase_source()`` (called once) if that gives a passphrase,
    else makes a random key and writes ``storage.key``.

    Raises:
        StateError: from the source.
    """
    passphrase = passphrase_source()
    if passphrase:
        salt = nacl.utils.random(argon2id.SALTBYTES)
        ops, mem = PASSPHRASE_OPSLIMIT, PASSPHRASE_MEMLIMIT
        header = (MAGIC + bytes([MODE_PASSPHRASE]) + salt + ops.to_bytes(4, "big")
                  + mem.to_bytes(8, "big"))
        return passphrase_key(passphrase, salt, ops, mem), header
    key = nacl.utils.random(nacl.secret.SecretBox.KEY_SIZE)
    write_atomic(home / KEY_FILE, key, 0o600)
    return key, MAGIC + bytes([MODE_KEYFILE])


def load_key(home: Path, data: bytes,
             passphrase_source: Passphrase = env_passphrase) -> tuple[bytes, bytes, bytes]:
    """Split a state file and recover its key: returns ``(key, header, sealed box)``.
    ``passphrase_source()`` is called (once) only for a passphrase-protected file.

    Raises:
        StateError: not a state file, key file missing, passphrase needed (the source
            gave none), unknown mode; or from the source.
    """
    if data[:4] != MAGIC or len(data) < 5:
        raise StateError(f"{home / STATE_FILE} is not a wa-cli state file")
    if data[4] == MODE_KEYFILE:
        try:
            key = (home / KEY_FILE).read_bytes()
        except FileNotFoundError:
            raise StateError(f"{home / KEY_FILE} is missing; the state cannot be opened") from None
        return key, data[:5], data[5:]
    if data[4] == MODE_PASSPHRASE:
        passphrase = passphrase_source()
        if not passphrase:
            raise StateError(f"{home} is protected by a passphrase: set {PASSPHRASE_ENV}, "
                             "run the command on a terminal to be asked for it, or keep it "
                             "in the OS keyring ('wa-cli init --keyring')")
        salt, rest = data[5:5 + argon2id.SALTBYTES], data[5 + argon2id.SALTBYTES:]
        ops, mem = int.from_bytes(rest[:4], "big"), int.from_bytes(rest[4:12], "big")
        end = 5 + argon2id.SALTBYTES + 12
        return passphrase_key(passphrase, salt, ops, mem), data[:end], data[end:]
    raise StateError(f"unknown state file mode {data[4]}")


def _flock(fd: int, how: int, deadline: float, busy: Callable[[], StateLocked]) -> None:
    while True:
        try:
            fcntl.flock(fd, how | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() >= deadline:
                raise busy() from None
            time.sleep(0.05)


def holder_pid(home: Path) -> int | None:
    """The process id written in ``home/lock`` by the process holding it (or that held it
    last), ``None`` if unknown."""
    try:
        text = (home / LOCK_FILE).read_text().strip()
    except (OSError, UnicodeDecodeError):
        return None
    return int(text) if text.isdigit() else None


def _busy(home: Path, timeout: float) -> StateLocked:
    pid = holder_pid(home)
    who = f"wa-cli process {pid}" if pid else "another wa-cli process"
    return StateLocked(f"{home} is in use by {who} (waited {timeout:g}s)")


@contextmanager
def locked(home: Path, timeout: float, *, create: bool = False) -> Iterator[None]:
    """Hold ``home/lock`` exclusively (``flock``; one writing process per home), creating
    ``home`` (0700), and a shared hold on ``home/readers.lock`` (exclusive if ``create``:
    while a home is being created, no reader may open it); wait at most ``timeout`` s.
    The holder's process id is written in ``home/lock`` (:func:`holder_pid`).

    Raises:
        StateLocked: still held by another process after ``timeout`` seconds; the
            message names the holder's process id.
    """
    home.mkdir(mode=0o700, parents=True, exist_ok=True)
    deadline = time.monotonic() + timeout
    fd = os.open(home / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        _flock(fd, fcntl.LOCK_EX, deadline, lambda: _busy(home, timeout))
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            with shared(home, max(0.0, deadline - time.monotonic()), exclusive=create):
                yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


@contextmanager
def shared(home: Path, timeout: float, *, exclusive: bool = False) -> Iterator[None]:
    """Hold ``home/readers.lock`` shared (read-only commands, alongside the writing
    process) or ``exclusive``; wait at most ``timeout`` s.

    Raises:
        StateLocked: held the other way after ``timeout`` seconds (a home being created).
    """
    fd = os.open(home / READERS_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        _flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH,
               time.monotonic() + timeout, lambda: _busy(home, timeout))
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def seal(key: bytes, header: bytes, plaintext: bytes) -> bytes:
    """The file contents: ``header`` then ``plaintext`` in a SecretBox under ``key``."""
    return header + nacl.secret.SecretBox(key).encrypt(plaintext)


def unseal(key: bytes, box: bytes, where: Path) -> bytes:
    """Open the SecretBox of a state file.

    Raises:
        StateError: wrong key or passphrase, or a tampered file.
    """
    try:
        return nacl.secret.SecretBox(key).decrypt(box)
    except nacl.exceptions.CryptoError:
        raise StateError(f"cannot decrypt {where}: wrong key or passphrase") from None
