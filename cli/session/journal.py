"""The history journal of a device home: history entries and dedupe keys, appended.

The state is saved before every send and every acknowledged batch. Its keys and
ratchets (``state.bin``, tens of KiB) are rewritten each time, but the history
(500 entries) and the dedupe keys (10,000) are most of its bytes and change by a
few items per save, so they live in ``journal.bin``: each save appends one sealed
record with what changed since the last one, and the file is rewritten whole
(compacted, atomically) once it has grown to several times its compacted size.

File: a sequence of records ``length (u32, big-endian) || SecretBox(msgpack map)``
under the home's storage key::

    {base: bool, history: [[seq, entry], ...], seen: bytes,
     inbox: [[n, record | None], ...], inbox_next: int}

``base`` records reset everything read so far (a compacted journal is one base
record). ``seq`` numbers each history entry in the order it was appended; a record
holding a ``seq`` already read replaces that entry (it was changed in place). The
history is the last ``HISTORY_LIMIT`` entries by ``seq``; ``seen`` appends 16-byte
keys, the oldest dropped beyond ``SEEN_LIMIT``. ``inbox`` holds the events kept
until shown (:mod:`cli.inbox`): a record for ``n`` replaces it, ``None`` removes it;
``inbox_next`` is the inbox's next number (the highest read wins). Journals written
before the inbox existed lack both keys (an empty inbox).

A record cut short by a crash (its length runs past the end of the file) is
dropped and the file truncated to the records before it; a complete record that
does not open is an error (tampering or corruption), never skipped.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import msgpack
import nacl.exceptions
import nacl.secret

from cli.session.vault import StateError, write_atomic

__all__ = ["COMPACT_FACTOR", "COMPACT_MIN", "JOURNAL_FILE", "Journal", "Replayed"]

JOURNAL_FILE = "journal.bin"
COMPACT_MIN = 1 << 20  # bytes: never compact a journal smaller than this
COMPACT_FACTOR = 4  # compact once the journal is this many times its compacted size
_LEN = 4


@dataclass
class Replayed:
    """What a journal holds: history ``(seq, entry)`` pairs by ``seq`` and the dedupe
    keys in order (both before the limits are applied), the inbox (``n -> record``)
    and its next number."""

    history: list[tuple[int, dict]] = field(default_factory=list)
    seen: list[bytes] = field(default_factory=list)
    inbox: dict[int, dict] = field(default_factory=dict)
    inbox_next: int = 0


class Journal:
    """Appends and compacts ``journal.bin`` in a device home. One writer at a time
    (the state's group commit); the methods doing I/O block (run them in a thread).

    Args:
        home: the device directory.
        key: the 32-byte storage key.
    """

    def __init__(self, home: Path, key: bytes) -> None:
        self.path = home / JOURNAL_FILE
        self._box = nacl.secret.SecretBox(key)
        self.size = 0  # bytes in the file
        self.base_size = 0  # bytes of the last compacted journal
        self.rewrite = False  # set after a failed append or to migrate: compact on the next write

    def should_compact(self) -> bool:
        """Whether the next write should rewrite the whole journal."""
        return self.rewrite or self.size > max(COMPACT_MIN, COMPACT_FACTOR * self.base_size)

    @staticmethod
    def pack(history: list[list], seen: bytes, *, base: bool, inbox: list[list] = (),
             inbox_next: int = 0) -> bytes:
        """The plaintext of one record (see the module docstring); cheap for a delta."""
        return msgpack.packb({"base": base, "history": history, "seen": seen,
                              "inbox": list(inbox), "inbox_next": inbox_next},
                             use_bin_type=True)

    def _seal(self, plain: bytes) -> bytes:
        sealed = self._box.encrypt(plain)
        return len(sealed).to_bytes(_LEN, "big") + sealed

    def append(self, plain: bytes) -> None:
        """Seal a record (:meth:`pack`) and append it durably (write, fsync; the
        directory too if the file is new). Blocks: run it in a worker thread.

        Raises:
            OSError: the write failed; the next write then compacts (:attr:`rewrite`),
                so a partly written record never has records after it.
        """
        record = self._seal(plain)
        new = not self.path.exists()
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                view = memoryview(record)
                while view:
                    view = view[os.write(fd, view):]
                os.fsync(fd)
            finally:
                os.close(fd)
            if new:
                dfd = os.open(self.path.parent, os.O_RDONLY)
                try:
                    os.fsync(dfd)
                finally:
                    os.close(dfd)
        except OSError:
            self.rewrite = True
            raise
        self.size += len(record)

    def replace(self, plain: bytes) -> None:
        """Make a base record (:meth:`pack` with ``base=True``) the whole journal,
        atomically and durably. Blocks: run it in a worker thread.

        Raises:
            OSError: the write failed (the previous journal is intact).
        """
        record = self._seal(plain)
        write_atomic(self.path, record)
        self.size = self.base_size = len(record)
        self.rewrite = False

    def load(self, *, truncate: bool = True) -> Replayed:
        """Read the journal (empty if there is none), truncating a torn last record
        (unless not ``truncate``: a reader beside the writing process skips it).

        Raises:
            StateError: a complete record does not open or is malformed.
        """
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return Replayed()
        entries: dict[int, dict] = {}
        seen: list[bytes] = []
        inbox: dict[int, dict] = {}
        inbox_next = 0
        pos = base_size = 0
        while len(data) - pos >= _LEN:
            n = int.from_bytes(data[pos:pos + _LEN], "big")
            if len(data) - pos - _LEN < n:
                break  # torn by a crash while appending
            try:
                m = msgpack.unpackb(self._box.decrypt(data[pos + _LEN:pos + _LEN + n]),
                                    raw=False)
                base, history, blob = bool(m["base"]), m["history"], m["seen"]
                if base:
                    entries, seen, inbox, base_size = {}, [], {}, _LEN + n
                for seq, entry in history:
                    if not isinstance(seq, int) or not isinstance(entry, dict):
                        raise TypeError("history item is not [seq, map]")
                    entries[seq] = entry
                for num, record in m.get("inbox", ()):
                    if not isinstance(num, int) or not isinstance(record, dict | None):
                        raise TypeError("inbox item is not [n, map | nil]")
                    if record is None:
                        inbox.pop(num, None)
                    else:
                        inbox[num] = record
                inbox_next = max(inbox_next, int(m.get("inbox_next", 0)))
                if not isinstance(blob, bytes) or len(blob) % 16:
                    raise TypeError("seen is not 16-byte keys")
                seen.extend(blob[i:i + 16] for i in range(0, len(blob), 16))
            except (nacl.exceptions.CryptoError, ValueError, TypeError, KeyError,
                    msgpack.UnpackException) as exc:
                raise StateError(f"corrupt history journal {self.path} at byte {pos}: "
                                 f"{exc}") from exc
            pos += _LEN + n
        if pos < len(data) and truncate:
            with open(self.path, "r+b") as f:
                f.truncate(pos)
                os.fsync(f.fileno())
        self.size, self.base_size = pos, base_size
        return Replayed(sorted(entries.items()), seen, inbox, inbox_next)
