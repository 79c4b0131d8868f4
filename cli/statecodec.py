"""The plaintext inside a device's sealed state file, and what keeps a snapshot cheap.

A state is saved before every send and every acknowledged batch, so its snapshot
runs on the event loop very often; with a full history (500 entries) and 10,000
dedupe keys, packing everything afresh each time cost about 1 ms of CPU. Format 2
stores the two bulky sections as single byte strings built from parts kept ready:

* ``seen``: the dedupe keys, oldest first, concatenated (16 bytes each), kept as a
  growing ``bytearray`` by :class:`SeenIds`;
* ``history``: a msgpack stream (one map per entry, oldest first), each entry packed
  once by :class:`HistoryPacker` and reused until it is reported changed.

Format 1 (lists in place of those byte strings) is still read.

The map (msgpack, then sealed by :mod:`cli.vault`)::

    {format: 2, user_id, device_id, name, relay_url, account_key: bytes|None,
     identity: str (vodozemac pickle), published_version, contacts: {alias: user_id},
     device_lists: [[body, signature, user_id]], sessions: [[user_id, device_id,
     identity_key, [pickle, ...]]], seen: bytes, history: bytes, next_device_id,
     last_seen: [[user_id, device_id, ts]], groups: {...} (cli.groups)}
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Iterator

import msgpack

__all__ = ["FORMAT_VERSION", "SEEN_KEY_LEN", "HistoryPacker", "SeenIds", "unpack_history"]

FORMAT_VERSION = 2
SEEN_KEY_LEN = 16


class SeenIds:
    """The most recent ``limit`` dedupe keys (:data:`SEEN_KEY_LEN` bytes each), oldest first.

    Supports ``key in seen``, ``len(seen)``, iteration (oldest first), :meth:`add` and
    :meth:`to_bytes` (the concatenation, kept ready: no per-snapshot work).
    """

    def __init__(self, limit: int, keys: Iterable[bytes] = ()) -> None:
        self._limit = limit
        self._keys: set[bytes] = set()
        self._blob = bytearray()
        for key in keys:
            self.add(key)

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
        while len(self._keys) > self._limit:
            self._keys.discard(bytes(self._blob[:SEEN_KEY_LEN]))
            del self._blob[:SEEN_KEY_LEN]  # cheap: bytearray deletes at the front in O(1)
        return True

    def to_bytes(self) -> bytes:
        """Every key, oldest first, concatenated."""
        return bytes(self._blob)

    def __contains__(self, key: object) -> bool:
        return key in self._keys

    def __len__(self) -> int:
        return len(self._keys)

    def __iter__(self) -> Iterator[bytes]:
        blob = bytes(self._blob)
        return (blob[i:i + SEEN_KEY_LEN] for i in range(0, len(blob), SEEN_KEY_LEN))


class HistoryPacker:
    """Packs history entries (dicts) into one msgpack stream, each entry only once.

    Entries are remembered by identity; an entry changed in place after it was
    packed must be reported with :meth:`changed` (``State.history_changed``), or the
    old packing would be saved.
    """

    def __init__(self) -> None:
        self._packed: dict[int, tuple[dict, bytes]] = {}

    def pack(self, entries: Iterable[dict]) -> bytes:
        """The msgpack stream of ``entries`` in order (packing only new or changed ones)."""
        old, new = self._packed, {}
        parts = []
        for entry in entries:
            hit = old.get(id(entry))
            if hit is None or hit[0] is not entry:
                hit = (entry, msgpack.packb(entry, use_bin_type=True))
            new[id(entry)] = hit
            parts.append(hit[1])
        self._packed = new  # entries that left the history are forgotten
        return b"".join(parts)

    def changed(self, entry: dict) -> None:
        """Forget the packing of ``entry`` (it was modified in place)."""
        self._packed.pop(id(entry), None)


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
