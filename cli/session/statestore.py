"""Where one device's state lives on disk and how it gets there (:class:`StateStore`).

Two files in the home (see :mod:`cli.state`): ``state.bin``, rewritten atomically
with keys, ratchets and lists at every save, and ``journal.bin`` (:mod:`cli.journal`),
to which each save first appends what changed in history, dedupe keys and the inbox
of events kept until shown (:mod:`cli.inbox`, which also owns ``shown.bin``). Saves go
through a group commit (:class:`cli.vault.GroupCommit`): the snapshot is taken on
the event loop, sealing and writing happen in a worker thread.
"""

from __future__ import annotations

import hashlib
from collections import deque

import msgpack

from cli.session import statecodec, vault
from cli.session.journal import Journal
from cli.session.statecodec import Snapshot
from cli.session.statecodec import StateFields as State

__all__ = ["StateStore", "pickle_key"]


def pickle_key(storage_key: bytes) -> bytes:
    """The 32-byte key that vodozemac pickles are encrypted under, derived from the
    storage key (BLAKE2b, personalised ``wa-olm-pickle``)."""
    return hashlib.blake2b(storage_key, digest_size=32, person=b"wa-olm-pickle").digest()


class StateStore:
    """Persists one :class:`cli.state.State` (its ``home``) under ``storage_key``.

    Args:
        state: the state it saves and loads.
        storage_key: the 32-byte key of the home (see :mod:`cli.vault`).
        header: the ``state.bin`` header naming how the key is obtained.

    Attributes:
        pickle_key: the key of the vodozemac pickles inside the files.
        tracker: which history entries the journal lacks (``State.history_changed``).
    """

    def __init__(self, state: State, storage_key: bytes, header: bytes, *,
                 readonly: bool = False) -> None:
        self._state = state
        self.readonly = readonly
        self._storage_key = storage_key
        self._header = header
        self.pickle_key = pickle_key(storage_key)
        self.tracker = statecodec.HistoryTracker()
        self._journal = Journal(state.home, storage_key)
        self._commit = vault.GroupCommit(self._take, self._write, self._written)

    @property
    def writes(self) -> int:
        """Durable writes so far (one may cover many saves)."""
        return self._commit.writes

    def seal(self, plain: bytes) -> bytes:
        """``state.bin`` contents for a plaintext map (header + SecretBox); thread-safe."""
        return vault.seal(self._storage_key, self._header, plain)

    def snapshot(self) -> bytes:
        """The encrypted ``state.bin`` of the state as it is now."""
        return self.seal(msgpack.packb(self._state._to_map(), use_bin_type=True))

    def _check_writable(self) -> None:
        if self.readonly:
            raise vault.StateError(f"{self._state.home} was opened read-only")

    def save(self) -> None:
        """Snapshot and write now, blocking. See :meth:`cli.vault.GroupCommit.write_blocking`.

        Raises:
            StateError: the state was opened read-only.
        """
        self._check_writable()
        self._commit.write_blocking()

    async def asave(self) -> None:
        """Group-committed save. See :meth:`cli.vault.GroupCommit.write`.

        Raises:
            StateError: the state was opened read-only.
        """
        self._check_writable()
        await self._commit.write()

    def compact_next(self) -> None:
        """Make the next write a compacted journal (only what the state holds then)."""
        self._journal.rewrite = True

    def load(self, m: dict) -> None:
        """Fill the state from a decrypted ``state.bin`` map: history and dedupe keys from
        the journal (format 3), or from the map (formats 1 and 2; the next save then
        moves them to a new journal).

        Raises:
            StateError: a corrupt journal. KeyError, TypeError, ValueError, ...: a
                corrupt map (see :func:`cli.statecodec.load_map`).
        """
        state = self._state
        statecodec.load_map(state, m, self.pickle_key)
        limit, seen_limit = state.history.maxlen, state.seen.limit
        if "history" in m:
            seen = m["seen"]
            state.seen = (statecodec.SeenIds.from_bytes(seen_limit, seen)
                          if isinstance(seen, bytes) else statecodec.SeenIds(seen_limit, seen))
            state.history = deque(statecodec.unpack_history(m["history"]), maxlen=limit)
            self._journal.rewrite = True
        else:
            replayed = self._journal.load(truncate=not self.readonly)
            state.seen = statecodec.SeenIds(seen_limit, replayed.seen)
            state.history = deque(self.tracker.adopt(replayed.history[-limit:]), maxlen=limit)
            state.inbox.load(replayed.inbox, replayed.inbox_next)

    def _take(self) -> Snapshot:
        """On the event loop: ``state.bin``'s plaintext and the journal record of what
        changed in history and dedupe keys (or all of it, when the journal is compacted)."""
        state = self._state
        hot = msgpack.packb(state._to_map(), use_bin_type=True)
        base = self._journal.should_compact()
        if base:
            entries = self.tracker.everything(state.history)
            seen, mark = state.seen.to_bytes(), state.seen.unsaved()[1]
            inbox, inbox_mark = state.inbox.everything()
        else:
            entries = self.tracker.unsaved(state.history)
            seen, mark = state.seen.unsaved()
            inbox, inbox_mark = state.inbox.unsaved()
        record = None
        if base or entries or seen or inbox:
            record = Journal.pack(statecodec.HistoryTracker.wire(entries), seen, base=base,
                                  inbox=inbox, inbox_next=state.inbox.next_n)
        return Snapshot(hot, record, base, entries, mark, inbox_mark)

    def _write(self, snap: Snapshot) -> None:
        """In a worker thread: the journal record first, then ``state.bin`` (so a crash
        in between never leaves advanced ratchets without the history and dedupe keys
        of what they decrypted)."""
        if snap.record is not None:
            if snap.base:
                self._journal.replace(snap.record)
            else:
                self._journal.append(snap.record)
        vault.write_atomic(self._state.home / vault.STATE_FILE, self.seal(snap.hot))

    def _written(self, snap: Snapshot) -> None:
        self.tracker.saved(snap.entries)
        self._state.seen.saved(snap.seen_mark)
        self._state.inbox.saved(snap.inbox_mark)
