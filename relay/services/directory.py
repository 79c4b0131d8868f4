"""The key directory of a home node: signed device lists and one-time / fallback keys.

Only a user's home node (see :mod:`relay.config.ring`) stores that user's directory
entries. Device lists are stored as msgpack ``{body, signature}`` of the
:class:`~relay.protocol.frames.SignedDeviceList`, and verified on the way in
(the account signature is the only authority). A list may hold at most
``max_devices`` devices: every node checks it, on lists published here and on
lists that arrive from peers (:meth:`Directory.check_device_count`). Parsed lists
of recently used users are cached in a bounded dict.
"""

from __future__ import annotations

import time

from relay.config.ring import Ring
from relay.errors import RelayError
from relay.protocol import (
    DeviceList,
    ErrorCode,
    RemoteProtocolError,
    is_user_id,
    verify_device_list,
)
from relay.protocol.frames import ClaimedKey, OneTimeKey, SignedDeviceList
from relay.protocol.identity import (
    MAX_VERSION_STEP,
    decode_signed_list,
    encode_signed_list,
    one_time_key_message,
    verify_signature,
)
from relay.services.claim_limits import ClaimLimits
from relay.services.homes import Homes
from storage import DuplicateKey, StaleVersion, Storage

BLOCK_MARK = "blocked/"
"""Storage marker prefix of accounts an operator blocked (``blocked/<user_id>``: the
reason); their devices are refused at login (``wa-relay admin user block``)."""
DEFAULT_MAX_DEVICES = 8
KEYS_LOW = 20  # push key_count to a connected device below this many one-time keys
MAX_KEY_ID = 64  # characters
KEY_SIZE = 32  # Curve25519 public key bytes
SIGNATURE_SIZE = 64  # Ed25519; stored right after the key (storage keeps the key bytes opaque)


def _stored_key(k: OneTimeKey) -> bytes:
    return k.key + (k.signature or b"")


def _claimed(device_id: int, key_id: str, stored: bytes, fallback: bool) -> ClaimedKey:
    return ClaimedKey(device_id=device_id, key_id=key_id, key=stored[:KEY_SIZE],
                      fallback=fallback, signature=stored[KEY_SIZE:] or None)


def pack_list(signed: SignedDeviceList) -> bytes:
    """msgpack ``{body, signature}``: the stored form of a signed list, and the body
    of a ``device_list`` envelope (:func:`relay.protocol.identity.encode_signed_list`)."""
    return encode_signed_list(signed)


def unpack_list(blob: bytes) -> SignedDeviceList:
    """Inverse of :func:`pack_list`.

    Raises:
        RelayError: ``bad_request`` if ``blob`` is not such a map (it is not verified here).
    """
    try:
        return decode_signed_list(blob)
    except RemoteProtocolError as exc:
        raise RelayError(ErrorCode.BAD_REQUEST, "malformed signed device list") from exc


class Directory:
    """Device lists and keys of the users homed at node ``node_id``.

    Args:
        storage: the node's storage.
        ring: the node's :class:`~relay.services.homes.Homes` (a bare ring: no reshape).
        node_id: this node's id.
        cache_size: most parsed device lists kept in memory.
        max_devices: most devices one list may hold.
        claim_limits: the key-claim budgets (default: :class:`ClaimLimits` defaults).
    """

    def __init__(self, storage: Storage, ring: Ring | Homes, node_id: str,
                 cache_size: int = 4096, claim_limits: ClaimLimits | None = None, *,
                 max_devices: int = DEFAULT_MAX_DEVICES) -> None:
        self.max_devices = max_devices
        self._storage = storage
        self._ring = self.homes = ring if isinstance(ring, Homes) else Homes(node_id, ring)
        self._node_id = node_id
        self._cache: dict[str, tuple[SignedDeviceList, DeviceList]] = {}
        self._cache_size = cache_size
        # issue 10: claims throttled (relay.services.claim_limits)
        self.claim_limits = claim_limits if claim_limits is not None else ClaimLimits()

    # ------------------------------------------------------------ homes

    @staticmethod
    def check_user_id(user_id: str) -> None:
        """Raise ``bad_request`` unless ``user_id`` is a well-formed user id."""
        if not is_user_id(user_id):
            raise RelayError(ErrorCode.BAD_REQUEST, "malformed user_id")

    def is_home(self, user_id: str) -> bool:
        """True if this node is ``user_id``'s home."""
        return self._ring.home(user_id).id == self._node_id

    def check_homed_at(self, user_id: str, node_id: str, role: str = "user") -> None:
        """Raise ``bad_request`` unless ``user_id`` is well-formed and homed at node
        ``node_id`` (a peer speaks only for its own users; ``role`` names the user
        in the message, e.g. ``"sender"``)."""
        self.check_user_id(user_id)
        if not self.homes.homed_at(user_id, node_id):
            raise RelayError(ErrorCode.BAD_REQUEST, f"{role} is not homed at that peer")

    def check_home(self, user_id: str) -> None:
        """Raise ``moved`` (with the home URL) unless this node is ``user_id``'s home."""
        home = self._ring.home(user_id)
        if home.id != self._node_id:
            raise RelayError(ErrorCode.MOVED, f"the home of this user is {home.id}", url=home.url,
                             user_id=user_id)

    # ------------------------------------------------------------ device lists

    def check_device_count(self, parsed: DeviceList) -> None:
        """Raise ``too_large`` (``quota`` = ``max_devices``) if the list holds more
        than ``max_devices`` devices."""
        if len(parsed.devices) > self.max_devices:
            raise RelayError(ErrorCode.TOO_LARGE,
                             f"a device list may hold at most {self.max_devices} devices "
                             f"(this one has {len(parsed.devices)})", user_id=parsed.user_id,
                             quota="max_devices")

    def _remember(self, user_id: str, entry: tuple[SignedDeviceList, DeviceList]) -> None:
        cached = self._cache.get(user_id)
        if cached is not None and cached[1].version >= entry[1].version:
            return
        self._cache.pop(user_id, None)
        if len(self._cache) >= self._cache_size:
            del self._cache[next(iter(self._cache))]
        self._cache[user_id] = entry

    def forget(self, user_id: str) -> None:
        """Drop the cached list of ``user_id`` (another process of this node stored a
        newer one, or the user was handed to another node); the next lookup reads the
        storage."""
        self._cache.pop(user_id, None)

    def forget_all(self) -> None:
        """Drop every cached list."""
        self._cache.clear()

    async def put_device_list(self, signed: SignedDeviceList) -> DeviceList:
        """Verify and store a device list for a user homed here.

        Raises:
            RelayError: ``unauthorized`` (bad signature), ``bad_request``
                (malformed, expired, or a version more than
                :data:`~relay.protocol.identity.MAX_VERSION_STEP` above the held one),
                ``moved`` (not homed here), ``stale_version`` (version does not grow),
                ``too_large`` (more than ``max_devices``).
            RemoteProtocolError: from :func:`verify_device_list`.
            StorageFull: nothing stored.
        """
        parsed = verify_device_list(signed)
        async with self.homes.hold([parsed.user_id]):
            self.check_home(parsed.user_id)
            self.check_device_count(parsed)
            if parsed.expires_at is not None and parsed.expires_at < time.time():
                raise RelayError(ErrorCode.BAD_REQUEST, "device list has expired",
                                 user_id=parsed.user_id)
            old = await self.get_device_list(parsed.user_id)
            if old is not None and parsed.version > old[1].version + MAX_VERSION_STEP:
                raise RelayError(ErrorCode.BAD_REQUEST,
                                 f"device list version may grow by at most {MAX_VERSION_STEP} "
                                 f"(have {old[1].version}, got {parsed.version})",
                                 user_id=parsed.user_id)
            try:
                await self._storage.put_device_list(parsed.user_id, parsed.version,
                                                    pack_list(signed))
            except StaleVersion as exc:
                raise RelayError(ErrorCode.STALE_VERSION, "device list version must grow",
                                 user_id=parsed.user_id) from exc
        self._remember(parsed.user_id, (signed, parsed))
        return parsed

    async def get_device_list(self, user_id: str) -> tuple[SignedDeviceList, DeviceList] | None:
        """The stored signed list of a user homed here and its parsed form, or ``None``."""
        cached = self._cache.get(user_id)
        if cached is not None:
            return cached
        stored = await self._storage.get_device_list(user_id)
        if stored is None:
            return None
        signed = unpack_list(stored[1])
        entry = (signed, verify_device_list(signed, user_id))
        self._remember(user_id, entry)
        return entry

    async def require_device_list(self, user_id: str) -> tuple[SignedDeviceList, DeviceList]:
        """Like :meth:`get_device_list` but raise ``unknown_user`` if there is none."""
        entry = await self.get_device_list(user_id)
        if entry is None:
            raise RelayError(ErrorCode.UNKNOWN_USER, "no device list published for this user",
                             user_id=user_id)
        return entry

    async def check_devices(
        self, user_id: str, device_ids: list[int], sender: tuple[str, int] | None = None,
        *, removed_ok: bool = False,
    ) -> frozenset[int]:
        """Check that ``device_ids`` are exactly the user's current devices, once each.

        Args:
            user_id: a user homed here.
            device_ids: the devices a message addresses (one copy each).
            sender: ``(user_id, device_id)`` of the sending device; when the
                recipient is the sender's own user, that device needs no copy.
            removed_ok: accept copies for devices no longer in the list, as long
                as every current device has one (a part already answered
                ``queued``: docs/protocol.md, "Order", rule 6).

        Returns:
            The device ids whose copies are to be dropped (removed devices; empty
            unless ``removed_ok``).

        Raises:
            RelayError: ``unknown_user``; ``stale_devices`` with the current
                signed list when the device ids differ (or repeat).
        """
        signed, parsed = await self.require_device_list(user_id)
        expected = parsed.device_ids
        if sender is not None and sender[0] == user_id:
            expected = expected - {sender[1]}
        given = set(device_ids)
        if len(given) == len(device_ids) and given == expected:
            return frozenset()
        if removed_ok and len(given) == len(device_ids) and expected and given > expected:
            return frozenset(given - expected)
        raise RelayError(
            ErrorCode.STALE_DEVICES, f"copies do not match device list v{parsed.version}",
            user_id=user_id, device_list=signed,
        )

    # ------------------------------------------------------------ keys

    async def upload_keys(
        self, user_id: str, device_id: int, one_time_keys: list[OneTimeKey],
        fallback_key: OneTimeKey | None,
    ) -> int:
        """Add one-time keys (and replace the fallback key) of a device; return its count.

        A key's ``signature``, if given, must verify under the device's Ed25519 key in
        its current list (claimers check it again; the node stores it after the key).

        Raises:
            RelayError: ``bad_request`` for a malformed key or a signature that does
                not verify (nothing stored). A one-time key whose id is stored or was
                claimed already is left out (see :meth:`_add_keys_one_by_one`).
            StorageFull: nothing stored.
        """
        keys = [*one_time_keys, *([fallback_key] if fallback_key else [])]
        device = None
        for k in keys:
            if not 0 < len(k.key_id) <= MAX_KEY_ID or len(k.key) != KEY_SIZE:
                raise RelayError(ErrorCode.BAD_REQUEST,
                                 f"a key needs a 1..{MAX_KEY_ID} char id and {KEY_SIZE} bytes")
            if k.signature is not None:
                if device is None:
                    _, parsed = await self.require_device_list(user_id)
                    device = parsed.device(device_id)
                if device is None or not verify_signature(
                        device.ed25519, one_time_key_message(user_id, device_id, k.key_id, k.key),
                        k.signature):
                    raise RelayError(ErrorCode.BAD_REQUEST,
                                     f"key {k.key_id!r} is not signed by the device's key")
        if one_time_keys:
            pairs = [(k.key_id, _stored_key(k)) for k in one_time_keys]
            try:
                count = await self._storage.add_one_time_keys(user_id, device_id, pairs)
            except DuplicateKey:
                count = await self._add_keys_one_by_one(user_id, device_id, pairs)
        else:
            count = await self._storage.count_one_time_keys(user_id, device_id)
        if fallback_key is not None:
            await self._storage.set_fallback_key(user_id, device_id, fallback_key.key_id,
                                                 _stored_key(fallback_key))
            self.claim_limits.remember_fallback(user_id, device_id, fallback_key.key_id,
                                                _stored_key(fallback_key))
        return count

    async def _add_keys_one_by_one(
        self, user_id: str, device_id: int, pairs: list[tuple[str, bytes]]
    ) -> int:
        """Add the keys of a batch that clashed, each on its own, leaving out those whose
        id is stored or was claimed already (a retried upload whose answer was lost,
        or ``claimed`` ids a hostile old home handed over for the ids a device uses
        next: vodozemac's ids are counters). One clash no longer refuses the whole
        upload, fallback key included, which left such a device without a key to claim.
        Returns the device's count (a batch of such ids only adds nothing: a retry).

        Raises:
            StorageFull: a key could not be stored.
        """
        for pair in pairs:
            try:
                await self._storage.add_one_time_keys(user_id, device_id, [pair])
            except DuplicateKey:
                continue
        return await self._storage.count_one_time_keys(user_id, device_id)

    async def keyed_devices(self, user_id: str, device_ids: list[int]) -> list[int]:
        """Those of ``device_ids`` (devices of a user homed here) that hold a fallback
        key or at least one one-time key, ascending: the devices that reached this
        home since they were linked (``get_devices {keys}``)."""
        keyed = []
        for device_id in sorted(set(device_ids)):
            if (await self._storage.get_fallback_key(user_id, device_id) is not None
                    or await self._storage.count_one_time_keys(user_id, device_id) > 0):
                keyed.append(device_id)
        return keyed

    async def key_count(self, user_id: str, device_id: int) -> int:
        """How many unclaimed one-time keys the device has."""
        return await self._storage.count_one_time_keys(user_id, device_id)

    async def claim_keys(
        self, user_id: str, device_ids: list[int]
    ) -> tuple[list[ClaimedKey], dict[int, int]]:
        """Take one key per listed device of a user homed here.

        Returns:
            The claimed keys (devices with neither a one-time nor a fallback key
            are absent) and ``{device_id: count}`` for devices whose one-time
            keys dropped below :data:`KEYS_LOW` with this claim.

        Raises:
            RelayError: ``unknown_user``; ``unknown_device`` for a device id not
                in the list; ``bad_request`` for a repeated device id.

        A device whose one-time keys are claimed faster than its budget
        (:mod:`relay.services.claim_limits`) gets its fallback key instead.
        """
        async with self.homes.hold([user_id]):
            self.check_home(user_id)
            return await self._claim_keys(user_id, device_ids)

    async def _claim_keys(
        self, user_id: str, device_ids: list[int]
    ) -> tuple[list[ClaimedKey], dict[int, int]]:
        _, parsed = await self.require_device_list(user_id)
        if len(set(device_ids)) != len(device_ids):
            raise RelayError(ErrorCode.BAD_REQUEST, "repeated device id")
        for d in device_ids:
            if d not in parsed.device_ids:
                raise RelayError(ErrorCode.UNKNOWN_DEVICE, f"device {d} is not in the list",
                                 user_id=user_id)
        keys: list[ClaimedKey] = []
        low: dict[int, int] = {}
        for d in device_ids:
            if not self.claim_limits.one_time_allowed(user_id, d):
                # one-time keys of this device are claimed too fast: its fallback key
                cached = self.claim_limits.fallback(user_id, d)
                if cached is None:  # not seen since start (a restart, a reshape, a sibling)
                    cached = await self._storage.get_fallback_key(user_id, d)
                    if cached is not None:
                        self.claim_limits.remember_fallback(user_id, d, *cached)
                if cached is not None:
                    keys.append(_claimed(d, cached[0], cached[1], True))
                continue
            got = await self._storage.claim_key(user_id, d)
            if got is None:
                continue
            key_id, key, fallback = got
            if fallback:
                self.claim_limits.remember_fallback(user_id, d, key_id, key)
            keys.append(_claimed(d, key_id, key, fallback))
            if not fallback:
                left = await self._storage.count_one_time_keys(user_id, d)
                if left < KEYS_LOW:
                    low[d] = left
        return keys, low
