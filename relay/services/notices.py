"""Device-list changes at a user's home: watchers, device removal and ``device_list`` notices.

See docs/protocol.md, "Device-list changes":

* **Watchers.** When a client's ``get_devices(U)`` is served (directly or
  forwarded, with the asking user in ``get_devices.watcher``), and when a
  ``send`` is refused with ``stale_devices`` (which hands out the list too),
  U's home records the asking user as a watcher of U (:meth:`watch`; durable,
  idempotent, with the time of that fetch; a pair this process stored less than
  :data:`WATCH_REFRESH` ago is not written again). Bounded (issue 11, settings
  ``watchers_per_user``, ``watching_per_account``, ``watcher_ttl``): a user keeps
  its most recently refreshed watchers (a new one drops the least recently
  refreshed), an account watches a bounded number of users here (beyond it,
  nothing is recorded), and a watcher that did not fetch again within the TTL
  is dropped (:meth:`expire_watchers`). A watcher that is not recorded still
  learns a changed list: its next ``send`` to U is refused ``stale_devices``
  with the list.
* **Publishing** a new list (:meth:`publish`) is serialised per user. A device
  dropped by the new list has its queue and keys purged and its live
  connection closed (``error unknown_device``, close 1008); it can no longer
  authenticate because it is not in the list.
* **Notices.** Then (unless it is the user's first list) the home builds one envelope of kind ``device_list``
  (``msg_id`` = the first 16 bytes of BLAKE2b-512(``user_id`` UTF-8 || version
  as u64 big-endian), ``sender_user`` = U, ``sender_device`` = 0, body = the
  signed list as msgpack ``{body, signature}``) and queues it for every current
  device of U and of every watcher: locally, or through ``notify`` to the
  watcher's home (the durable outbox when that home is down or refuses with a
  retryable code). A receiving home verifies the list, and queues the envelope
  once per user (dedupe by ``(sender_user, msg_id, user)``). A full device
  queue skips that user (logged): its client still learns the list through
  ``stale_devices``.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import trio

from relay.config.abuse import AbuseLimits
from relay.config.ring import Ring
from relay.errors import KNOWN_REFUSALS, RelayError, relay_error_from
from relay.protocol import DeviceList, ErrorCode, verify_device_list
from relay.protocol.frames import Envelope, Error, Notify, Ok, SignedDeviceList
from relay.services.delivery import DeviceRegistry, pack_envelope
from relay.services.directory import Directory, pack_list, unpack_list
from relay.services.federation import Federation, LinkDown, request_within
from relay.services.limits import QueuePolicy
from relay.services.outbox import RETRYABLE, Outbox
from storage import EnqueueRequest, QueueFull, Storage, StorageFull, StorageUnavailable

NOTICE_KIND = "device_list"
NOTIFY_BATCH = 1024  # user ids per notify frame (below the codec's array bound)
NOTICE_WORKERS = 32  # users served at once by one deliver_local (bounded tasks and memory)
WATCH_CACHE = 65536  # (user, watcher) pairs known to be stored
WATCH_REFRESH = 24 * 3600.0
"""Seconds during which this process does not write a stored pair again (at most half
``watcher_ttl``): a watcher's refresh time is exact to a day (the bounds and the TTL
are far coarser)."""


def notice_msg_id(user_id: str, version: int) -> bytes:
    """The ``msg_id`` of the notice for ``user_id``'s list ``version`` (16 bytes)."""
    return hashlib.blake2b(user_id.encode() + version.to_bytes(8, "big")).digest()[:16]


def notice_dedupe(sender_user: str, msg_id: bytes, user_id: str) -> bytes:
    """The storage dedupe id of one notice for one receiving user."""
    return b"dl\0" + sender_user.encode() + b"\0" + msg_id + user_id.encode()


class DeviceListChanges:
    """Watchers, device removal and notices of the users homed at one node.

    Args:
        node_id, ring: this node and the cluster.
        storage, directory, registry: local state and connected devices.
        federation, outbox: the way to other homes.
        max_queue: bound of one device queue.
        timeout: seconds a ``notify`` may take before it goes to the outbox.
        log: for metadata-only log lines.
        abuse: the node's limits (the watcher bounds and TTL; default: the defaults).
        clock: wall-clock seconds since the epoch (watcher refresh times).
        shared: other processes serve this node over the same storage (they may drop a
            pair this process wrote: a cached pair is then checked, one read).
    """

    def __init__(
        self, node_id: str, ring: Ring, storage: Storage, directory: Directory,
        registry: DeviceRegistry, federation: Federation, outbox: Outbox, *, max_queue: int,
        timeout: float, log: logging.Logger, abuse: AbuseLimits | None = None,
        clock: Callable[[], float] = time.time, shared: bool = False,
    ) -> None:
        self._node_id = node_id
        self._ring = ring
        self._storage = storage
        self._directory = directory
        self._registry = registry
        self._federation = federation
        self._outbox = outbox
        self._max_queue = max_queue
        self._timeout = timeout
        self._log = log
        self._abuse = abuse if abuse is not None else AbuseLimits()
        self._clock = clock
        self._shared = shared
        self._watched: dict[tuple[str, str], float] = {}  # pair -> when this process wrote it
        self._locks: dict[str, list] = {}  # user_id -> [trio.Lock, users]
        self.policy: QueuePolicy | None = None
        """Byte quotas charged to notices from peer nodes (set by the node)."""

    # ------------------------------------------------------------ watchers

    async def watch(self, user_id: str, watcher: str) -> None:
        """Durably record ``watcher`` as a watcher of ``user_id`` (a user homed here).

        A user never watches itself (its own devices always get notices). Within the
        bounds of ``watchers_per_user`` (the least recently refreshed watcher of
        ``user_id`` is dropped) and ``watching_per_account`` (a watcher at its bound
        is not recorded; logged at debug).

        Raises:
            StorageFull: not recorded.
        """
        pair = (user_id, watcher)
        now = self._clock()
        last = self._watched.get(pair)
        a = self._abuse
        refresh = min(WATCH_REFRESH, a.watcher_ttl / 2)  # a refreshed pair never expires
        if watcher == user_id:
            return
        if last is not None and 0 <= now - last < refresh:
            if not self._shared:
                return
            now = last  # another process may have dropped it: stored with this time or
            # later, add_watcher costs one read; else it is recorded again
        added = await self._storage.add_watcher(user_id, watcher, ts=now,
                                                max_watchers=a.watchers_per_user,
                                                max_watching=a.watching_per_account)
        if added.evicted is not None:
            self._watched.pop((user_id, added.evicted), None)
        if not added.recorded:
            self._log.debug("watcher %s of %s not recorded: it watches %d users here",
                            watcher[:8], user_id[:8], a.watching_per_account)
        self._watched.pop(pair, None)
        if len(self._watched) >= WATCH_CACHE:
            del self._watched[next(iter(self._watched))]
        self._watched[pair] = now

    async def expire_watchers(self) -> int:
        """Drop the watchers that did not fetch a list again within ``watcher_ttl``;
        return how many.

        Raises:
            StorageFull, StorageUnavailable: nothing dropped (retry at the next sweep).
        """
        bound = self._clock() - self._abuse.watcher_ttl
        gone = await self._storage.expire_watchers(bound)
        for pair in [p for p, ts in self._watched.items() if ts < bound]:
            del self._watched[pair]
        return gone

    async def fetch(self, user_id: str, watcher: str | None) -> SignedDeviceList:
        """The current signed list of a user homed here, recording ``watcher`` first.

        The list is read again after the watcher is stored, so a list published
        meanwhile is either returned or announced to the watcher.

        Raises:
            RelayError: ``unknown_user`` (no watcher is recorded then).
            StorageFull: the watcher could not be recorded.
        """
        signed, _ = await self._directory.require_device_list(user_id)
        if watcher is not None and watcher != user_id:
            await self.watch(user_id, watcher)
            signed, _ = await self._directory.require_device_list(user_id)
        return signed

    # ------------------------------------------------------------ publishing

    @contextmanager
    def _user_lock(self, user_id: str) -> Iterator[trio.Lock]:
        slot = self._locks.setdefault(user_id, [trio.Lock(), 0])
        slot[1] += 1
        try:
            yield slot[0]
        finally:
            slot[1] -= 1
            if slot[1] == 0:
                del self._locks[user_id]

    async def publish(self, signed: SignedDeviceList) -> DeviceList:
        """Verify and store a new list for a user homed here, remove dropped
        devices, then queue the notices (see the module docstring).

        Returns once the list and the removals are durable and every notice is
        queued locally, accepted by the watcher's home, or in the outbox (a
        notice that cannot be stored is logged, never raised).

        Raises:
            RelayError: ``unauthorized``, ``bad_request``, ``moved``, ``stale_version``
                (see :meth:`Directory.put_device_list`); nothing changed then.
            RemoteProtocolError: a malformed list.
            StorageFull: the list was not stored.
        """
        user_id = verify_device_list(signed).user_id
        with self._user_lock(user_id) as lock:
            async with lock:
                old = await self._directory.get_device_list(user_id)
                parsed = await self._directory.put_device_list(signed)
                removed = sorted(old[1].device_ids - parsed.device_ids) if old else []
                for device_id in removed:
                    await self._remove_device(user_id, device_id)
        self._log.info("device list of %s is now v%d (%d devices, %d removed)", user_id[:8],
                       parsed.version, len(parsed.devices), len(removed))
        if old is not None:  # a first list has no watchers and no other device to tell
            await self._announce(signed, parsed)
        return parsed

    async def _remove_device(self, user_id: str, device_id: int) -> None:
        gone = await self._storage.purge_device(user_id, device_id)
        session = self._registry.session(user_id, device_id)
        if session is not None:
            session.revoke()
        self._log.info("device %s/%d removed: %d queued envelopes purged", user_id[:8],
                       device_id, gone)

    async def _announce(self, signed: SignedDeviceList, parsed: DeviceList) -> None:
        user_id = parsed.user_id
        env = Envelope(msg_id=notice_msg_id(user_id, parsed.version), sender_user=user_id,
                       sender_device=0, ts=int(time.time() * 1000), kind=NOTICE_KIND,
                       body=pack_list(signed))
        groups: dict[str, list[str]] = {}
        for u in [user_id, *await self._storage.watchers(user_id)]:
            groups.setdefault(self._ring.home(u).id, []).append(u)

        async def one(dest: str, users: list[str]) -> None:
            for i in range(0, len(users), NOTIFY_BATCH):  # one batch at a time per home
                batch = users[i:i + NOTIFY_BATCH]
                try:
                    if dest == self._node_id:
                        await self.deliver_local(batch, env)
                    else:
                        await self._notify_remote(dest, batch, env)
                except KNOWN_REFUSALS as exc:
                    self._log.warning("notice of %s v%d for %d users at %s not stored: %s",
                                      user_id[:8], parsed.version, len(batch), dest, exc)

        async with trio.open_nursery() as nursery:
            for dest, users in groups.items():
                nursery.start_soon(one, dest, users)

    async def _notify_remote(self, dest: str, users: list[str], env: Envelope) -> None:
        frame = Notify(id=0, user_ids=users, envelope=env)
        if self._outbox.has_pending(dest) or not self._federation.links[dest].is_up:
            await self._outbox.put(frame, dest)
            return
        try:
            answer = await request_within(self._federation, dest, frame, self._timeout)
        except LinkDown:
            await self._outbox.put(frame, dest)
            return
        if isinstance(answer, Ok):
            return
        if isinstance(answer, Error) and answer.code in RETRYABLE:
            await self._outbox.put(frame, dest)
            return
        self._log.warning("notify to %s refused: %s", dest, getattr(answer, "code", answer.TYPE))

    # ------------------------------------------------------------ receiving

    async def receive(self, frame: Notify, peer_id: str) -> None:
        """Serve a ``notify`` from peer node ``peer_id``: check it, then :meth:`deliver_local`.

        Raises:
            RelayError / RemoteProtocolError: ``bad_request`` (sender not homed at
                the peer, wrong kind or msg_id, a user not homed here),
                ``unauthorized`` (the list's signature does not verify), ``too_large``
                (more devices than this node allows).
            StorageFull: retry later (users already served are deduplicated).
        """
        env = frame.envelope
        self._directory.check_homed_at(env.sender_user, peer_id, "sender")
        if env.kind != NOTICE_KIND or env.sender_device != 0:
            raise RelayError(ErrorCode.BAD_REQUEST, "notify carries device_list notices only")
        parsed = verify_device_list(unpack_list(env.body), env.sender_user)
        self._directory.check_device_count(parsed)
        if env.msg_id != notice_msg_id(env.sender_user, parsed.version):
            raise RelayError(ErrorCode.BAD_REQUEST, "notice msg_id does not match the list")
        for u in frame.user_ids:
            self._directory.check_user_id(u)
            if not self._directory.is_home(u):
                raise RelayError(ErrorCode.BAD_REQUEST, "user is not homed at this node",
                                 user_id=u)
        await self.deliver_local(frame.user_ids, env, peer_id=peer_id)

    async def deliver_local(self, user_ids: list[str], env: Envelope, *,
                            peer_id: str | None = None) -> None:
        """Queue ``env`` for every current device of each user (homed here), once per
        user; users without a list are skipped, a full queue skips its user (logged).
        At most :data:`NOTICE_WORKERS` users are served at a time.

        A notice from peer node ``peer_id`` is charged like a forward of that peer
        (sender, peer and strangers' quotas, :meth:`QueuePolicy.quota_for`): else a
        peer could queue any number of list versions of its own accounts, up to
        64 KiB each, in the queues of any user homed here.

        Raises:
            StorageFull: some users were not served (the others are, deduplicated).
            RelayError: ``quota_exceeded`` (retryable) for users over a byte quota
                (the others are served).
        """
        packed = pack_envelope(env)
        full: list[StorageFull | StorageUnavailable] = []
        over: list[QueueFull] = []

        async def one(user_id: str) -> None:
            entry = await self._directory.get_device_list(user_id)
            if entry is None:
                return
            items = [(user_id, d, packed) for d in sorted(entry[1].device_ids)]
            dedupe = notice_dedupe(env.sender_user, env.msg_id, user_id)
            try:
                if peer_id is not None and self.policy is not None:
                    charges, quota = await self.policy.quota_for(env.sender_user, [user_id],
                                                                 peer_id)
                    (answer,) = await self._storage.enqueue_many([EnqueueRequest(
                        items, dedupe=dedupe, max_queue=self._max_queue, charges=charges,
                        quota=quota)])
                    if isinstance(answer, QueueFull) and answer.quota != "queue_len":
                        over.append(answer)
                        return
                    if isinstance(answer, Exception):
                        raise answer
                    seqs = answer
                else:
                    seqs = await self._storage.enqueue(items, dedupe=dedupe,
                                                       max_queue=self._max_queue)
            except QueueFull:
                self._log.warning("notice for %s skipped: a device queue is full", user_id[:8])
                return
            except (StorageFull, StorageUnavailable) as exc:
                full.append(exc)
                return
            if seqs is not None:
                for _, device_id, _ in items:
                    self._registry.notify(user_id, device_id)

        todo = iter(dict.fromkeys(user_ids))

        async def worker() -> None:
            for user_id in todo:  # shared iterator: each user is served once
                await one(user_id)

        async with trio.open_nursery() as nursery:
            for _ in range(min(NOTICE_WORKERS, len(user_ids))):
                nursery.start_soon(worker)
        if full:
            raise full[0]
        if over:
            err = relay_error_from(over[0])
            assert err is not None and self.policy is not None
            err.retry_after_ms = self.policy.retry_after_ms
            raise err
