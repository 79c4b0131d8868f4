"""The durable outbox: forwards accepted with ``sent queued`` (and device-list
``notify`` requests), retried per destination.

Each destination node has one drain task. It sends the destination's entries
oldest first (FIFO, so per-device order is kept), deletes an entry once the
destination answered ``ok``, and on failure backs off exponentially (0.2 s
doubling to 30 s with jitter; a link coming back up ends the wait early).
A *final* rejection from the live destination (e.g. ``stale_devices``,
``unknown_user``), or an entry older than the queue TTL, turns into one
``bounce`` envelope for the sending device (deduplicated per entry), after
which the entry is deleted. Retryable answers (``storage_full``,
``queue_full``, ``rate_limited``, ``unavailable``, ``internal``) keep it.
A ``notify`` entry has no sending device: a final rejection or the TTL just
drops it (logged); the watchers' clients catch up through ``stale_devices``.

While a destination has pending entries, new forwards to it go to the
outbox too (see :meth:`Outbox.has_pending`), so they never overtake older ones.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import msgpack
import trio

from relay.delivery import pack_envelope
from relay.errors import KNOWN_REFUSALS, RelayError
from relay.federation import Federation, LinkDown, backoff_delays, request_within
from relay.protocol import (
    DEFAULT_LIMITS,
    ErrorCode,
    Limits,
    RemoteProtocolError,
    read_frame,
    write_frame,
)
from relay.protocol.frames import Envelope, Error, Forward, GroupForward, Notify, Ok
from storage import OutboxEntry, Storage

RETRYABLE = frozenset({
    ErrorCode.STORAGE_FULL.value, ErrorCode.QUEUE_FULL.value, ErrorCode.RATE_LIMITED.value,
    ErrorCode.UNAVAILABLE.value, ErrorCode.INTERNAL.value, ErrorCode.STORAGE_UNAVAILABLE.value,
})
BATCH = 64
DEAD_LETTER = "!dead-letter"
"""The outbox destination of entries that can never be sent (unreadable, or above the
peer frame limit): kept aside, counted in the logs, never drained nor dropped."""


def bounce_dedupe(entry: OutboxEntry, fwd: Forward | GroupForward) -> bytes:
    """The dedupe id of the bounce for one outbox entry."""
    return b"bounce\0" + fwd.sender_user.encode() + b"\0" + fwd.msg_id + entry.dest.encode()


class Outbox:
    """Durable per-destination retry queues of one node.

    Args:
        storage: the node's storage (``outbox_*`` and, for bounces, ``enqueue``).
        federation: the outgoing peer links.
        notify: ``notify(user_id, device_id)`` after a bounce was enqueued.
        queue_ttl: seconds after which an undeliverable entry is bounced.
        timeout: seconds to wait for one forward's answer.
        limits: frame limits (to read stored forwards back).
        log: for metadata-only log lines.
    """

    def __init__(
        self, storage: Storage, federation: Federation, notify: Callable[[str, int], None], *,
        queue_ttl: float, timeout: float, limits: Limits = DEFAULT_LIMITS, log: logging.Logger,
    ) -> None:
        self._storage = storage
        self._federation = federation
        self._notify = notify
        self._ttl = queue_ttl
        self._timeout = timeout
        self._log = log
        self._limits = limits.for_peers()  # stored forwards are read back with peer limits
        self.dead_letters = 0  # entries this process moved to DEAD_LETTER
        # Pending entries per destination: ids put by this process, plus a flag for
        # entries found in storage at start (cleared once a listing comes back empty).
        self._ids: dict[str, set[int]] = {d: set() for d in federation.links}
        self._backlog: dict[str, bool] = {d: False for d in federation.links}
        self._wake: dict[str, trio.Event] = {d: trio.Event() for d in federation.links}

    def has_pending(self, dest: str) -> bool:
        """True if ``dest`` has entries not yet delivered (new forwards must queue behind them)."""
        return bool(self._ids.get(dest)) or self._backlog.get(dest, False)

    async def put(self, request: Forward | GroupForward | Notify, dest: str) -> int:
        """Durably queue ``request`` for node ``dest``; return its outbox id.

        Raises:
            StorageFull: nothing stored.
        """
        outbox_id = await self._storage.outbox_put(dest, write_frame(request))
        self._ids[dest].add(outbox_id)
        self._wake[dest].set()
        return outbox_id

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Load pending state from storage, then drain every destination until cancelled."""
        for dest in self._ids:
            if await self._storage.outbox_list(dest, limit=1):
                self._backlog[dest] = True
        async with trio.open_nursery() as nursery:
            for dest in self._ids:
                nursery.start_soon(self._drain, dest)
            task_status.started()

    async def _drain(self, dest: str) -> None:
        delays = backoff_delays()
        while True:
            wake = self._wake[dest]
            if wake.is_set():
                self._wake[dest] = wake = trio.Event()
            entries = await self._storage.outbox_list(dest, limit=BATCH)
            if not entries:
                self._backlog[dest] = False
                await wake.wait()
                continue
            for entry in entries:
                outcome = await self._attempt(entry)
                if outcome == "done":
                    delays = backoff_delays()
                    continue
                await self._storage.outbox_retry(entry.outbox_id)
                link = self._federation.links[dest]
                with trio.move_on_after(next(delays)):
                    if outcome == "down":
                        await link.connected.wait()
                    else:
                        await trio.sleep_forever()
                break

    async def _delete(self, entry: OutboxEntry) -> None:
        await self._storage.outbox_delete(entry.outbox_id)
        self._ids[entry.dest].discard(entry.outbox_id)

    async def _attempt(self, entry: OutboxEntry) -> str:
        """Try one entry: ``"done"`` (delivered or bounced), ``"down"`` or ``"retry"``."""
        try:
            fwd = read_frame(entry.payload, self._limits)
        except RemoteProtocolError:
            fwd = None
        if not isinstance(fwd, Forward | GroupForward | Notify):
            return await self._dead_letter(entry, "unreadable")
        ts = fwd.ts if isinstance(fwd, Forward | GroupForward) else fwd.envelope.ts
        if ts / 1000 < time.time() - self._ttl:
            return await self._give_up(entry, fwd, ErrorCode.UNAVAILABLE.value,
                                       f"node {entry.dest} unreachable for the queue TTL", None)
        try:
            answer = await request_within(self._federation, entry.dest, fwd, self._timeout)
        except LinkDown:
            return "down"
        except RelayError as exc:  # too_large: it can never be carried
            if isinstance(fwd, Forward | GroupForward):
                return await self._bounce(entry, fwd, exc.code.value, exc.message, None)
            return await self._dead_letter(entry, exc.code.value)
        if isinstance(answer, Ok):
            await self._delete(entry)
            self._log.info("outbox %d delivered to %s", entry.outbox_id, entry.dest)
            return "done"
        if isinstance(answer, Error) and answer.code not in RETRYABLE:
            return await self._give_up(entry, fwd, answer.code, answer.message, answer.user_id)
        self._log.info("outbox %d to %s: retry after %s", entry.outbox_id, entry.dest,
                       getattr(answer, "code", answer.TYPE))
        return "retry"

    async def _dead_letter(self, entry: OutboxEntry, why: str) -> str:
        """Keep an entry that can never be sent aside (destination :data:`DEAD_LETTER`),
        bounce to its sender when the sender can still be read, never drop it."""
        salvaged = _salvage(entry.payload)
        if salvaged is not None:
            sender_user, sender_device, msg_id = salvaged
            body = msgpack.packb({"code": ErrorCode.INTERNAL.value,
                                  "message": f"the relay could not forward this message ({why})",
                                  "user_id": ""}, use_bin_type=True)
            env = Envelope(msg_id=msg_id, sender_user=sender_user, sender_device=sender_device,
                           ts=int(time.time() * 1000), kind="bounce", body=body)
            try:
                await self._storage.enqueue(
                    [(sender_user, sender_device, pack_envelope(env))],
                    dedupe=b"dead\0" + sender_user.encode() + b"\0" + msg_id + entry.dest.encode())
            except KNOWN_REFUSALS:
                self._log.warning("outbox %d: bounce could not be stored yet", entry.outbox_id)
                return "retry"
            self._notify(sender_user, sender_device)
        try:
            await self._storage.outbox_put(DEAD_LETTER, entry.payload)
        except KNOWN_REFUSALS:
            self._log.warning("outbox %d: dead-letter could not be stored yet", entry.outbox_id)
            return "retry"
        await self._delete(entry)
        self.dead_letters += 1
        self._log.error("outbox %d to %s is %s: kept aside as a dead letter (%d this run)%s",
                        entry.outbox_id, entry.dest, why, self.dead_letters,
                        "; bounced to its sender" if salvaged else "")
        return "done"

    async def _give_up(
        self, entry: OutboxEntry, request: Forward | GroupForward | Notify, code: str, message: str,
        user_id: str | None,
    ) -> str:
        if isinstance(request, Forward | GroupForward):
            return await self._bounce(entry, request, code, message, user_id)
        await self._delete(entry)
        self._log.warning("outbox %d (notify) to %s dropped: %s", entry.outbox_id, entry.dest, code)
        return "done"

    async def _bounce(
        self, entry: OutboxEntry, fwd: Forward | GroupForward, code: str, message: str,
        user_id: str | None,
    ) -> str:
        uid = user_id or (fwd.recipients[0].user_id if fwd.recipients else "")
        body = msgpack.packb({"code": code, "message": message, "user_id": uid}, use_bin_type=True)
        env = Envelope(msg_id=fwd.msg_id, sender_user=fwd.sender_user,
                       sender_device=fwd.sender_device, ts=int(time.time() * 1000),
                       kind="bounce", body=body)
        try:
            await self._storage.enqueue(
                [(fwd.sender_user, fwd.sender_device, pack_envelope(env))],
                dedupe=bounce_dedupe(entry, fwd),
            )
        except KNOWN_REFUSALS:
            self._log.warning("outbox %d: bounce could not be stored yet", entry.outbox_id)
            return "retry"
        self._notify(fwd.sender_user, fwd.sender_device)
        await self._delete(entry)
        self._log.info("outbox %d to %s bounced: %s", entry.outbox_id, entry.dest, code)
        return "done"


def _salvage(payload: bytes) -> tuple[str, int, bytes] | None:
    """``(sender_user, sender_device, msg_id)`` of a stored forward that does not parse
    as a frame (read without frame limits: it is this node's own data), else ``None``."""
    try:
        m = msgpack.unpackb(payload, raw=False, strict_map_key=False)
    except (ValueError, msgpack.UnpackException):
        return None
    if not isinstance(m, dict):
        return None
    user, dev, msg_id = m.get("sender_user"), m.get("sender_device"), m.get("msg_id")
    if isinstance(user, str) and type(dev) is int and isinstance(msg_id, bytes):
        return user, dev, msg_id
    return None
