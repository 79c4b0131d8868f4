"""The durable outbox: parts of sends accepted with ``sent queued`` (and device-list
``notify`` requests), retried per destination in batches.

Each destination node has one drain task. It lists the destination's entries
oldest first (FIFO, so per-device order is kept) and sends as many as fit one
``forward_batch`` frame (``max_peer_frame``); the destination answers each item
on its own (``results``). Stored items are deleted together
(``outbox_delete_many``); a *final* rejection from the live destination (e.g.
``stale_devices``, ``unknown_user``), or an entry older than the queue TTL,
turns into one ``bounce`` envelope for the sending device (deduplicated per
entry), after which the entry is deleted. Retryable answers (``storage_full``,
``queue_full``, ``rate_limited``, ``unavailable``, ``internal``,
``storage_unavailable``) keep the entry, and only those entries are sent again,
after a backoff (0.2 s doubling to 30 s with jitter; a link coming back up ends
the wait early).

Order: an entry kept for a retry is never overtaken by a later entry of the
same sending device to the same device: the destination refuses (with the same
code, nothing written) a sending device's later items to the devices of one of
its items it refused with a retryable code in the same batch
(:meth:`relay.services.router.Router.store_parts`, ``enqueue_many``), so those
are kept too and retried behind it, oldest first. A ``notify`` entry has no
sending device: a final rejection or the TTL just drops it (logged); the
watchers' clients catch up through ``stale_devices``.

While a destination has pending entries, new parts for it go to the outbox too
(see :meth:`Outbox.has_pending`), so they never overtake older ones.

A ``moved`` answer (a reshape handed the recipient to another node) is not final:
the entry is sent again towards where its recipients are now (:attr:`Outbox.reroute`).

Caps (issue 11): the outbox holds at most ``sender_cap`` bytes of one sending
account's parts and ``total_cap`` bytes of parts in all (:meth:`OutboxCaps.over_caps`;
bytes are stored payload lengths, counted for the entries this process put or
found at start; :class:`~relay.services.outbox_caps.OutboxCaps`). A part over a cap is refused to its sender (``quota_exceeded``,
quota ``outbox_sender`` / ``outbox_total``, with ``retry_after_ms``), never dropped;
what was accepted is never touched. ``quota_exceeded`` answers of a destination
are retryable like ``queue_full``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import trio

from relay.errors import KNOWN_REFUSALS, RETRYABLE_CODES, RelayError
from relay.net.backoff import PEER_BACKOFF
from relay.protocol import (
    DEFAULT_LIMITS,
    ErrorCode,
    Limits,
    RemoteProtocolError,
    read_frame,
    write_frame,
)
from relay.protocol.frames import (
    BounceBack,
    Envelope,
    Error,
    Forward,
    ForwardBatch,
    Frame,
    GroupForward,
    Notify,
    Ok,
    Results,
)
from relay.protocol.stored import encode_bounce_body, encode_envelope, salvage_forward
from relay.services.federation import Federation, LinkDown, request_within
from relay.services.outbox_caps import OutboxCaps
from storage import EnqueueRequest, OutboxEntry, Storage, StorageFull, StorageUnavailable

RETRYABLE = RETRYABLE_CODES
START_COUNT = 100_000
"""Most entries per destination counted against the caps at start."""
BATCH = 256
"""Most entries listed per round (then packed to fit one frame)."""
BATCH_HEADER = 64
DEAD_LETTER = "!dead-letter"
"""The outbox destination of entries that can never be sent (unreadable, or above the
peer frame limit): kept aside, counted in the logs, never drained nor dropped."""

Request = Forward | GroupForward | Notify | BounceBack


def bounce_dedupe(entry: OutboxEntry, fwd: Forward | GroupForward) -> bytes:
    """The dedupe id of the bounce for one outbox entry."""
    return b"bounce\0" + fwd.sender_user.encode() + b"\0" + fwd.msg_id + entry.dest.encode()


@dataclass(slots=True)
class _Item:
    entry: OutboxEntry
    request: Request
    size: int


class Outbox:
    """Durable per-destination retry queues of one node.

    Args:
        storage: the node's storage (``outbox_*`` and, for bounces, ``enqueue_many``).
        federation: the outgoing peer links.
        notify: ``notify(user_id, device_id)`` after a bounce was enqueued.
        queue_ttl: seconds after which an undeliverable entry is bounced.
        timeout: seconds to wait for one batch's answer.
        limits: the node's size budget (stored requests are read back, and batches
            packed, with the peer limits).
        log: for metadata-only log lines.
        sender_cap, total_cap: most payload bytes of one sending account's parts, and
            of all parts (``None``: no cap); see :attr:`caps`.
        retry_after_ms: the retry hint of a refusal over a cap.
    """

    def __init__(
        self, storage: Storage, federation: Federation, notify: Callable[[str, int], None], *,
        queue_ttl: float, timeout: float, limits: Limits = DEFAULT_LIMITS, log: logging.Logger,
        sender_cap: int | None = None, total_cap: int | None = None,
        retry_after_ms: int = 60_000,
    ) -> None:
        self.caps = OutboxCaps(sender_cap, total_cap, retry_after_ms)
        self._storage = storage
        self._federation = federation
        self._notify = notify
        self._ttl = queue_ttl
        self._timeout = timeout
        self._log = log
        self._limits = limits.for_peers()  # stored forwards are read back with peer limits
        self.dead_letters = 0  # entries this process moved to DEAD_LETTER
        #: Counters for tests and metrics: batches sent, entries stored by their destination.
        self.batches = 0
        self.delivered = 0
        #: ``on_finished(how, n)``: ``n`` entries left the outbox ``how`` (``"delivered"``,
        #: ``"bounced"``, ``"dead_letter"``, ``"dropped"``); the node counts them in metrics.
        self.on_finished: Callable[[str, int], None] = lambda how, n: None
        # Pending entries per destination: ids put by this process, plus a flag for
        # entries found in storage at start (cleared once a listing comes back empty).
        #: ``await reroute(parts, dest)`` sends forwards that ``dest`` answered ``moved``
        #: (a reshape handed the recipient over) to where the recipients are now;
        #: ``None``: such answers bounce like any final refusal.
        self.reroute: Callable[[list[Forward | GroupForward], str], Awaitable[None]] | None = None
        self._ids: dict[str, set[int]] = {d: set() for d in federation.links}
        self._backlog: dict[str, bool] = {d: False for d in federation.links}
        self._wake: dict[str, trio.Event] = {d: trio.Event() for d in federation.links}

    def has_pending(self, dest: str) -> bool:
        """True if ``dest`` has entries not yet delivered (new forwards must queue behind them)."""
        return bool(self._ids.get(dest)) or self._backlog.get(dest, False)

    def note_pending(self, dest: str | None = None) -> None:
        """Another process of this node put entries for ``dest`` (``None``: maybe for
        any destination): new forwards to it queue behind them, and this process's
        drain lists them too (the destination drops a copy it already stored, by
        message id, if both processes send it)."""
        for d in self._backlog if dest is None else (dest,):
            if d in self._backlog:
                self._backlog[d] = True
                self._wake[d].set()

    async def put(self, request: Request, dest: str) -> int:
        """Durably queue ``request`` for node ``dest``; return its outbox id.

        Raises:
            StorageFull, StorageUnavailable: nothing stored.
        """
        (outbox_id,) = await self.put_many([request], dest)
        return outbox_id

    async def put_many(self, requests: list[Request], dest: str) -> list[int]:
        """Durably queue ``requests`` for node ``dest``, in order, in one transaction;
        return their outbox ids.

        Raises:
            StorageFull, StorageUnavailable: nothing stored.
        """
        payloads = [write_frame(r) for r in requests]
        ids = await self._storage.outbox_put_many([(dest, p) for p in payloads])
        for oid, request, payload in zip(ids, requests, payloads, strict=True):
            self.caps.count(oid, request, len(payload))
        self._ids[dest].update(ids)
        self._wake[dest].set()
        return ids

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Load pending state from storage (and count it against the caps), then drain
        every destination until cancelled."""
        for dest in self._ids:
            found = await self._storage.outbox_list(dest, limit=START_COUNT)
            if found:
                self._backlog[dest] = True
            for entry in found:
                try:
                    request = read_frame(entry.payload, self._limits)
                except RemoteProtocolError:
                    continue  # the drain sets it aside
                if isinstance(request, Forward | GroupForward | Notify | BounceBack):
                    self.caps.count(entry.outbox_id, request, len(entry.payload))
        async with trio.open_nursery() as nursery:
            for dest in self._ids:
                nursery.start_soon(self._drain, dest)
            task_status.started()

    async def _drain(self, dest: str) -> None:
        delays = PEER_BACKOFF.delays()
        while True:
            wake = self._wake[dest]
            if wake.is_set():
                self._wake[dest] = wake = trio.Event()
            try:
                entries = await self._storage.outbox_list(dest, limit=BATCH)
                if not entries:
                    self._backlog[dest] = False
                    await wake.wait()
                    continue
                outcome, head = await self._attempt(dest, entries)
                if outcome == "done":
                    delays = PEER_BACKOFF.delays()
                    continue
                if head is not None:
                    await self._storage.outbox_retry(head)
            except (StorageFull, StorageUnavailable) as exc:
                # e.g. EIO on the delete after the destination stored a batch: the
                # entries stay and go again (deduplicated there); the node lives on
                self._log.warning("outbox to %s: storage failed (%s); retrying", dest, exc)
                outcome = "retry"
            link = self._federation.links[dest]
            with trio.move_on_after(next(delays)):
                if outcome == "down":
                    await link.connected.wait()
                else:
                    await trio.sleep_forever()

    async def delete_entries(self, entries: list[OutboxEntry]) -> None:
        """Delete entries taken elsewhere (e.g. handed to a user's new home by a reshape).

        Raises:
            StorageUnavailable: not deleted.
        """
        await self._delete_many(entries)

    async def _delete_many(self, entries: list[OutboxEntry]) -> None:
        if not entries:
            return
        await self._storage.outbox_delete_many([e.outbox_id for e in entries])
        for e in entries:
            self._ids[e.dest].discard(e.outbox_id)
            self.caps.uncount(e.outbox_id)

    async def _attempt(self, dest: str, entries: list[OutboxEntry]) -> tuple[str, int | None]:
        """One round: ``("done" | "down" | "retry", outbox id of the first kept entry)``."""
        items: list[_Item] = []
        size = BATCH_HEADER
        for entry in entries:
            try:
                request = read_frame(entry.payload, self._limits)
            except RemoteProtocolError:
                request = None
            if not isinstance(request, Forward | GroupForward | Notify | BounceBack):
                if await self._dead_letter(entry, "unreadable") != "done":
                    return "retry", entry.outbox_id
                continue
            ts = (request.envelope.ts if isinstance(request, Notify | BounceBack)
                  else request.ts)
            if ts / 1000 < time.time() - self._ttl:
                if await self._give_up(entry, request, ErrorCode.UNAVAILABLE.value,
                                       f"node {dest} unreachable for the queue TTL", None) != "done":
                    return "retry", entry.outbox_id
                continue
            n = len(entry.payload)
            if items and size + n > self._limits.max_frame:
                break
            items.append(_Item(entry, request, n))
            size += n
        if not items:
            return "done", None
        try:
            answer = await request_within(
                self._federation, dest, ForwardBatch(id=0, items=[i.request for i in items],
                                             queued=True),
                self._timeout)
        except LinkDown:
            return "down", items[0].entry.outbox_id
        except RelayError as exc:  # too_large: it can never be carried
            first = items[0]
            if len(items) > 1:  # cannot happen (packed to fit); send it alone next round
                self._log.warning("outbox batch to %s refused locally: %s", dest, exc.code.value)
                return "retry", first.entry.outbox_id
            if isinstance(first.request, Forward | GroupForward):
                done = await self._bounce_many([(first, exc.code.value, exc.message, None)])
                return ("done" if done else "retry"), first.entry.outbox_id
            return await self._dead_letter(first.entry, exc.code.value), first.entry.outbox_id
        self.batches += 1
        if isinstance(answer, Results) and len(answer.items) == len(items):
            results: list[Frame] = answer.items
        elif isinstance(answer, Error):
            results = [answer] * len(items)
        else:
            self._log.warning("outbox batch to %s: unexpected answer %r", dest, answer.TYPE)
            return "retry", items[0].entry.outbox_id
        return await self._settle(dest, items, results)

    async def _settle(
        self, dest: str, items: list[_Item], results: list[Frame]
    ) -> tuple[str, int | None]:
        stored: list[OutboxEntry] = []
        finals: list[tuple[_Item, str, str, str | None]] = []
        kept: list[int] = []  # indexes of entries kept for a retry
        moved: list[_Item] = []
        for i, (item, result) in enumerate(zip(items, results, strict=True)):
            if isinstance(result, Ok):
                stored.append(item.entry)
            elif (isinstance(result, Error) and result.code == ErrorCode.MOVED.value
                  and self.reroute is not None
                  and isinstance(item.request, Forward | GroupForward)):
                moved.append(item)
            elif isinstance(result, Error) and result.code not in RETRYABLE:
                finals.append((item, result.code, result.message, result.user_id))
            else:
                kept.append(i)
        if moved:
            assert self.reroute is not None
            await self.reroute([m.request for m in moved], dest)  # type: ignore[misc]
            await self._delete_many([m.entry for m in moved])
            self._log.info("outbox: %d entries to %s re-sent to the recipients' new homes",
                           len(moved), dest)
        await self._delete_many(stored)
        self.delivered += len(stored)
        self.on_finished("delivered", len(stored))
        if stored:
            self._log.info("outbox: %d entries delivered to %s", len(stored), dest)
        notifies = [f for f in finals if isinstance(f[0].request, Notify | BounceBack)]
        if notifies:
            await self._delete_many([f[0].entry for f in notifies])
            self.on_finished("dropped", len(notifies))
            for f in notifies:
                self._log.warning("outbox %d (%s) to %s dropped: %s", f[0].entry.outbox_id,
                                  f[0].request.TYPE, dest, f[1])
        bounced = await self._bounce_many([f for f in finals if f not in notifies])
        if kept:
            first = items[kept[0]]
            self._log.info("outbox: %d entries to %s kept for a retry (first %d: %s)", len(kept),
                           dest, first.entry.outbox_id,
                           getattr(results[kept[0]], "code", results[kept[0]].TYPE))
            return "retry", first.entry.outbox_id
        return ("done" if bounced else "retry"), None

    async def _dead_letter(self, entry: OutboxEntry, why: str) -> str:
        """Keep an entry that can never be sent aside (destination :data:`DEAD_LETTER`),
        bounce to its sender when the sender can still be read, never drop it."""
        salvaged = salvage_forward(entry.payload)
        if salvaged is not None:
            sender_user, sender_device, msg_id = salvaged
            body = encode_bounce_body(ErrorCode.INTERNAL.value,
                                      f"the relay could not forward this message ({why})", "")
            env = Envelope(msg_id=msg_id, sender_user=sender_user, sender_device=sender_device,
                           ts=int(time.time() * 1000), kind="bounce", body=body)
            try:
                await self._storage.enqueue(
                    [(sender_user, sender_device, encode_envelope(env))],
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
        await self._delete_many([entry])
        self.dead_letters += 1
        self.on_finished("dead_letter", 1)
        self._log.error("outbox %d to %s is %s: kept aside as a dead letter (%d this run)%s",
                        entry.outbox_id, entry.dest, why, self.dead_letters,
                        "; bounced to its sender" if salvaged else "")
        return "done"

    async def _give_up(
        self, entry: OutboxEntry, request: Request, code: str, message: str,
        user_id: str | None,
    ) -> str:
        if isinstance(request, Forward | GroupForward):
            item = _Item(entry, request, len(entry.payload))
            return "done" if await self._bounce_many([(item, code, message, user_id)]) else "retry"
        await self._delete_many([entry])
        self.on_finished("dropped", 1)
        self._log.warning("outbox %d (%s) to %s dropped: %s", entry.outbox_id, request.TYPE,
                          entry.dest, code)
        return "done"

    async def _bounce_many(self, finals: list[tuple[_Item, str, str, str | None]]) -> bool:
        """Queue one ``bounce`` envelope per entry for its sending device (one
        ``enqueue_many``), then delete the bounced entries. ``False`` if some bounce
        could not be stored (its entry stays for the next round)."""
        if not finals:
            return True
        requests = []
        for item, code, message, user_id in finals:
            fwd = item.request
            assert isinstance(fwd, Forward | GroupForward)
            uid = user_id or (fwd.recipients[0].user_id if fwd.recipients else "")
            body = encode_bounce_body(code, message, uid)
            env = Envelope(msg_id=fwd.msg_id, sender_user=fwd.sender_user,
                           sender_device=fwd.sender_device, ts=int(time.time() * 1000),
                           kind="bounce", body=body)
            requests.append(EnqueueRequest([(fwd.sender_user, fwd.sender_device,
                                             encode_envelope(env))],
                                           dedupe=bounce_dedupe(item.entry, fwd)))
        try:
            answers = await self._storage.enqueue_many(requests)
        except KNOWN_REFUSALS:
            answers = [RelayError(ErrorCode.STORAGE_UNAVAILABLE)] * len(requests)
        gone = []
        for (item, code, _, _), answer in zip(finals, answers, strict=True):
            if isinstance(answer, Exception):
                self._log.warning("outbox %d: bounce could not be stored yet", item.entry.outbox_id)
                continue
            fwd = item.request
            self._notify(fwd.sender_user, fwd.sender_device)  # type: ignore[union-attr]
            gone.append(item.entry)
            self._log.info("outbox %d to %s bounced: %s", item.entry.outbox_id, item.entry.dest,
                           code)
        await self._delete_many(gone)
        self.on_finished("bounced", len(gone))
        return len(gone) == len(finals)
