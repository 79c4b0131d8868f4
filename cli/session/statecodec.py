"""The plaintext of a device's ``state.bin``, and the bookkeeping that lets the bulky
parts (history, dedupe keys) be saved as small appends to ``journal.bin``
(:mod:`cli.journal`) instead of being rewritten with every save.

Format 3 (``state.bin``, msgpack, then sealed by :mod:`cli.vault`)::

    {format: 3, user_id, device_id, name, relay_url, relay_urls (optional: every
     address of the home when it has several), cluster_urls (optional: every node's
     URL, from auth_ok), account_key: bytes|None,
     identity: str (vodozemac pickle), published_version, contacts: {alias: user_id},
     device_lists: [[body, signature, user_id]], sessions: [[user_id, device_id,
     identity_key, [pickle, ...]]], next_device_id, last_seen: [[user_id, device_id, ts]],
     groups: {...} (cli.groups), pending_withdrawals: [device_id, ...],
     cluster: [body, signature, cluster_key] | None (the pinned cluster description),
     outbox: [{id, to, group_id, payload, ts}] (cli.features.outbox; absent before),
     prefs: {...} (cli.session.prefs; absent in older states: the defaults)}

History and dedupe keys are in the journal. Formats 1 and 2 kept them in the map
(``seen``: a list of keys / their concatenation; ``history``: a list of maps / a
msgpack stream); they are still read, and the next save moves them to the journal.
"""

from __future__ import annotations

import io
from collections import deque
from collections.abc import Collection, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import msgpack
import nacl.signing
import vodozemac

from cli.session import crypto
from cli.session.groups import GroupStore
from cli.session.inbox import Inbox
from cli.session.prefs import Prefs
from cli.session.prekeys import FallbackInfo
from relay.protocol import DeviceList, verify_device_list
from relay.protocol.cluster import PinnedCluster, SignedCluster
from relay.protocol.frames import SignedDeviceList

__all__ = [
    "FORMAT_VERSION", "SEEN_KEY_LEN", "CachedList", "HistoryTracker", "SeenIds", "SessionSet",
    "Snapshot", "StateFields", "load_map", "to_map", "unpack_history",
]

FORMAT_VERSION = 3
SEEN_KEY_LEN = 16


@dataclass
class SessionSet:
    """Olm sessions with one remote device, most recent first, for its ``identity_key``."""

    identity_key: bytes
    sessions: list[vodozemac.Session] = field(default_factory=list)


@dataclass
class CachedList:
    """A verified device list and the signed form it came from."""

    parsed: DeviceList
    signed: SignedDeviceList


@dataclass
class Snapshot:
    """One save, taken on the event loop and written in a worker thread."""

    hot: bytes  # state.bin plaintext
    record: bytes | None  # journal record plaintext, None if nothing to journal
    base: bool  # the record replaces the journal (compaction)
    entries: list  # history items it holds, with their versions (HistoryTracker)
    seen_mark: int  # SeenIds.saved mark
    inbox_mark: dict = field(default_factory=dict)  # Inbox.saved mark


class StateFields(Protocol):
    """What this module and :mod:`cli.session.statestore` read and fill in a device state:
    the fields of :class:`cli.session.state.State` (which satisfies this protocol; neither
    module imports it, so that ``state`` -> ``statestore`` -> ``statecodec`` only points down).
    """

    home: Path
    user_id: str
    device_id: int
    name: str
    relay_url: str
    account_key: nacl.signing.SigningKey | None
    identity: crypto.DeviceIdentity
    published_version: int
    contacts: dict[str, str]
    device_lists: dict[str, CachedList]
    sessions: dict[tuple[str, int], SessionSet]
    next_device_id: int
    pending_withdrawals: set[int]
    last_seen: dict[tuple[str, int], int]
    groups: GroupStore
    fallback: FallbackInfo
    highest_list: dict[str, int]
    prefs: Prefs
    seen: SeenIds
    history: deque[dict]
    inbox: Inbox
    outbox: list[dict]

    def _to_map(self) -> dict: ...


State = StateFields  # the name the functions below document


def to_map(state: State, pickle_key: bytes) -> dict:
    """The format-3 map of ``state`` (see the module docstring); Olm and Megolm
    sessions and the device account pickled under ``pickle_key``."""
    pk = pickle_key
    return {
        "format": FORMAT_VERSION,
        "user_id": state.user_id,
        "device_id": state.device_id,
        "name": state.name,
        "relay_url": state.relay_url,
        "relay_urls": state.relay_urls,
        "cluster_urls": list(state.cluster_urls),
        "account_key": bytes(state.account_key) if state.account_key else None,
        "identity": state.identity.pickle(pk),
        "published_version": state.published_version,
        "contacts": state.contacts,
        "device_lists": [[c.signed.body, c.signed.signature, uid]
                         for uid, c in state.device_lists.items()],
        "sessions": [[uid, did, ss.identity_key, [s.pickle(pk) for s in ss.sessions]]
                     for (uid, did), ss in state.sessions.items()],
        "next_device_id": state.next_device_id,
        "fallback": state.fallback.to_map(),
        "highest_list": [[u, v] for u, v in state.highest_list.items()],
        "pending_withdrawals": sorted(state.pending_withdrawals),
        "last_seen": [[uid, did, ts] for (uid, did), ts in state.last_seen.items()],
        "groups": state.groups.to_map(pk),
        "cluster": (None if state.cluster is None else
                    [state.cluster.signed.body, state.cluster.signed.signature,
                     state.cluster.key]),
        "outbox": state.outbox,
        "prefs": state.prefs.to_map(),
    }


def load_map(state: State, m: dict, pickle_key: bytes) -> None:
    """Fill ``state`` from a map of any format, except history and dedupe keys.

    Raises:
        KeyError, TypeError, ValueError, crypto.CryptoError, RemoteProtocolError,
        GroupError: a corrupt map (the caller reports ``StateError``).
    """
    pk = pickle_key
    state.user_id, state.device_id, state.name = m["user_id"], m["device_id"], m["name"]
    state.relay_url = m["relay_url"]
    state.relay_urls = [str(u) for u in m.get("relay_urls", ())]
    state.cluster_urls = [u for u in m.get("cluster_urls", ()) if isinstance(u, str)]
    ak = m["account_key"]
    state.account_key = nacl.signing.SigningKey(ak) if ak else None
    state.identity = crypto.DeviceIdentity.from_pickle(m["identity"], pk)
    state.published_version = m["published_version"]
    state.contacts = dict(m["contacts"])
    for body, sig, uid in m["device_lists"]:
        signed = SignedDeviceList(body=body, signature=sig)
        state.device_lists[uid] = CachedList(verify_device_list(signed, uid), signed)
    for uid, did, ikey, pickles in m["sessions"]:
        state.sessions[(uid, did)] = SessionSet(
            ikey, [crypto.session_from_pickle(p, pk) for p in pickles])
    state.next_device_id = m.get("next_device_id", 1)
    state.pending_withdrawals = {int(i) for i in m.get("pending_withdrawals", ())}
    state.last_seen = {(uid, did): ts for uid, did, ts in m.get("last_seen", [])}
    state.groups = GroupStore.from_map(m.get("groups"), pk)
    state.fallback = FallbackInfo.from_map(m.get("fallback"))
    state.highest_list = {u: v for u, v in m.get("highest_list", [])}
    pinned = m.get("cluster")
    if pinned is not None:
        body, sig, key = pinned
        state.cluster = PinnedCluster.verify(SignedCluster(body, sig, key), key)
    state.outbox = [dict(e) for e in m.get("outbox", ())]
    state.prefs = Prefs.from_map(m.get("prefs"))


class SeenIds:
    """The most recent ``limit`` dedupe keys (:data:`SEEN_KEY_LEN` bytes each), oldest first.

    Supports ``key in seen``, ``len(seen)``, iteration (oldest first), :meth:`add`,
    :meth:`to_bytes` (the concatenation, kept ready) and, for the journal, the keys
    added since the last save (:meth:`unsaved`, :meth:`saved`). Keys given to the
    constructor count as saved.
    """

    def __init__(self, limit: int, keys: Iterable[bytes] = ()) -> None:
        self.limit = limit
        self._keys: set[bytes] = set()
        self._blob = bytearray()
        self._added = 0  # keys ever added
        self._saved = 0  # of which the first this many are durable
        for key in keys:
            self.add(key)
        self._saved = self._added

    @classmethod
    def from_bytes(cls, limit: int, blob: bytes) -> SeenIds:
        """Restore from :meth:`to_bytes` output.

        Raises:
            ValueError: the length is not a multiple of :data:`SEEN_KEY_LEN`.
        """
        if len(blob) % SEEN_KEY_LEN:
            raise ValueError(f"seen ids of {len(blob)} bytes are not {SEEN_KEY_LEN}-byte keys")
        return cls(limit, (blob[i:i + SEEN_KEY_LEN] for i in range(0, len(blob), SEEN_KEY_LEN)))

    def add(self, key: bytes) -> bool:
        """Record ``key`` (dropping the oldest beyond the limit); ``False`` if already there.

        Raises:
            ValueError: ``key`` is not :data:`SEEN_KEY_LEN` bytes.
        """
        if len(key) != SEEN_KEY_LEN:
            raise ValueError(f"a dedupe key is {SEEN_KEY_LEN} bytes, not {len(key)}")
        if key in self._keys:
            return False
        self._keys.add(key)
        self._blob += key
        self._added += 1
        while len(self._keys) > self.limit:
            self._keys.discard(bytes(self._blob[:SEEN_KEY_LEN]))
            del self._blob[:SEEN_KEY_LEN]  # cheap: bytearray deletes at the front in O(1)
        return True

    def to_bytes(self) -> bytes:
        """Every key, oldest first, concatenated."""
        return bytes(self._blob)

    def unsaved(self) -> tuple[bytes, int]:
        """The keys added since the last :meth:`saved` (those still held), concatenated,
        and the mark to pass to :meth:`saved` once they are durable."""
        n = min(self._added - self._saved, len(self._keys))
        return (bytes(self._blob[len(self._blob) - n * SEEN_KEY_LEN:]) if n else b""), self._added

    def saved(self, mark: int) -> None:
        """Record that every key added before ``mark`` (from :meth:`unsaved`) is durable."""
        self._saved = max(self._saved, mark)

    def __contains__(self, key: object) -> bool:
        return key in self._keys

    def __len__(self) -> int:
        return len(self._keys)

    def __iter__(self) -> Iterator[bytes]:
        blob = bytes(self._blob)
        return (blob[i:i + SEEN_KEY_LEN] for i in range(0, len(blob), SEEN_KEY_LEN))


class _Tracked:
    __slots__ = ("entry", "seq", "version", "saved")

    def __init__(self, entry: dict, seq: int, version: int, saved: int) -> None:
        self.entry, self.seq, self.version, self.saved = entry, seq, version, saved


class HistoryTracker:
    """Numbers history entries in append order (``seq``) and knows which version of
    each the journal holds, by entry identity (the entry dicts are kept referenced).

    Appended entries are found at the end of the history; an entry changed in place
    must be reported with :meth:`changed` (``State.history_changed``), or the journal
    keeps its old version.
    """

    def __init__(self) -> None:
        self._known: dict[int, _Tracked] = {}
        self._dirty: dict[int, _Tracked] = {}
        self._next_seq = 0

    def adopt(self, pairs: list[tuple[int, dict]]) -> list[dict]:
        """Register entries read from the journal (already saved); returns the entries."""
        for seq, entry in pairs:
            self._known[id(entry)] = _Tracked(entry, seq, 0, 0)
            self._next_seq = max(self._next_seq, seq + 1)
        return [entry for _, entry in pairs]

    def changed(self, entry: dict) -> None:
        """Note that ``entry`` was modified in place (no effect on an unknown entry: it
        is new and will be saved whole anyway)."""
        t = self._known.get(id(entry))
        if t is not None and t.entry is entry:
            t.version += 1
            self._dirty[id(entry)] = t

    def _register_new(self, history: Iterable[dict]) -> None:
        new = []
        for entry in reversed(history):
            t = self._known.get(id(entry))
            if t is not None and t.entry is entry:
                break
            new.append(entry)
        for entry in reversed(new):
            t = self._known[id(entry)] = _Tracked(entry, self._next_seq, 1, 0)
            self._dirty[id(entry)] = t
            self._next_seq += 1

    def unsaved(self, history: Collection[dict]) -> list[tuple[_Tracked, int]]:
        """``(item, version)`` of every new or changed entry, oldest first."""
        self._register_new(history)
        if len(self._known) > 2 * len(history) + 64:  # forget entries the deque dropped
            keep = {id(e) for e in history}
            self._known = {k: t for k, t in self._known.items() if k in keep}
        return sorted(((t, t.version) for t in self._dirty.values()), key=lambda x: x[0].seq)

    def everything(self, history: Collection[dict]) -> list[tuple[_Tracked, int]]:
        """``(item, version)`` of every entry in ``history`` (for a compacted journal)."""
        self._register_new(history)
        return [(self._known[id(e)], self._known[id(e)].version) for e in history]

    def saved(self, items: list[tuple[_Tracked, int]]) -> None:
        """Record that these versions are durable in the journal."""
        for t, version in items:
            t.saved = max(t.saved, version)
            if t.saved >= t.version and self._dirty.get(id(t.entry)) is t:
                del self._dirty[id(t.entry)]

    @staticmethod
    def wire(items: list[tuple[_Tracked, int]]) -> list[list]:
        """The journal's ``history`` field for ``items``: ``[[seq, entry], ...]``."""
        return [[t.seq, t.entry] for t, _ in items]


def unpack_history(data: bytes | list) -> list[dict]:
    """History entries from format 2 (a msgpack stream) or format 1 (a list).

    Raises:
        ValueError: not a stream of maps.
    """
    if isinstance(data, list):
        entries = data
    else:
        try:
            entries = list(msgpack.Unpacker(io.BytesIO(data), raw=False))
        except (msgpack.UnpackException, ValueError) as exc:
            raise ValueError(f"corrupt history: {exc}") from exc
    if not all(isinstance(e, dict) for e in entries):
        raise ValueError("a history entry is not a map")
    return entries
