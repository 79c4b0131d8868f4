"""The handoff of a cluster reshape: moving users' homes over the peer links
(docs/protocol.md, "Handoff"; the routing rules meanwhile are in :mod:`relay.services.homes`).

**Old home** (:meth:`Handoff.run`): at start it lists the users in its storage that
the current ring homes elsewhere (*outgoing*) and moves them one by one:

1. hold the user's writes (:meth:`Homes.begin_move`) and tell its connected
   devices ``moved`` (they reconnect to this node, which answers ``moved`` once
   the user is handed over);
2. send the user's whole state in ``handoff_put`` batches (the first with
   ``reset``), with the user's pending outbox entries, then the media blobs it
   uploaded in ``handoff_media`` chunks; each is answered once durable;
3. write the marker ``out/<user>`` (this node must not serve the user again before
   the new home has answered ``handoff_done``), send ``handoff_done``;
4. on ``ok``: delete the user's state, blobs and outbox entries here, clear the marker;
   the user's writes, held meanwhile, now go to the new home. On ``unavailable``
   (the new home still has requests for the user in flight to this node): clear
   the marker, let the writes go on here and try again later (from step 1).
   Without an answer the user stays held and ``handoff_done`` is sent again.

A refusal that waiting will not change is retried a few times, then the user is *stuck*:
served here, not tried again until the new home's link comes up anew or this node
restarts (:mod:`relay.services.handoff_refusals`).

When nothing is left it sends ``handoff_complete`` to every node of the new ring
(retrying until each answered) and sets :attr:`Handoff.drained`. A node that the
reshape removes stops then.

**New home** (:mod:`relay.services.handoff_in`): imports each batch, re-queues the
outbox entries, and records ``in/<user>`` (durable) when ``handoff_done`` arrives;
from then on it serves the user. ``handoff_complete`` records ``complete/<node>``.

Every step is idempotent and every marker durable, so a kill -9 of either side at
any point resumes: the old home finds the user's state (or its marker) again at
start; the new home answers repeated batches and ``done`` alike.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import trio

from relay.errors import RelayError
from relay.net.backoff import PEER_BACKOFF
from relay.protocol import ErrorCode, RemoteProtocolError, read_frame
from relay.protocol._handoff_frames import Record, encode_records
from relay.protocol.frames import (
    Error,
    Forward,
    Frame,
    GroupForward,
    HandoffComplete,
    HandoffDone,
    HandoffMedia,
    HandoffPut,
    Ok,
)
from relay.services.federation import LinkDown, request_within
from relay.services.handoff_in import HandoffIn, HandoffStats
from relay.services.handoff_refusals import STATUS_USERS, Refusals, permanent
from relay.services.requeue import requeue, reroute_removed
from storage import OutboxEntry, StorageError, UserRecord

if TYPE_CHECKING:
    from relay.node import Node

EXPORT_PAGE = 256
"""Records read per ``export_user`` call."""
PUT_HEADER = 1024
"""Bytes reserved in a ``handoff_put`` frame for everything but the records."""
ENTRY_OVERHEAD = 8
"""Bytes an outbox entry adds to a ``handoff_put`` besides its payload (a bin header)."""
OUTBOX_PER_PUT = 1024
"""Most outbox entries in one ``handoff_put`` (well within the decoders' 4096 array items)."""
MEDIA_CHUNK = 128 * 1024
"""Bytes of media per ``handoff_media`` frame (within every peer frame limit)."""
REQUEST_TIMEOUT = 10.0
"""Seconds for the new home to answer one handoff request."""
STUCK_POLL = 1.0
"""Seconds between looks at the links of stuck users' new homes (when nothing else is
left to hand over)."""


def mark_prefix(ring_version: str) -> str:
    """The marker names of one reshape (one target ring) start with this."""
    return f"handoff/{ring_version[:16]}/"


def _to_record(r: UserRecord) -> Record:
    return (r.kind, r.device_id, r.key, r.seq, r.ts, r.value)


class Handoff:
    """Both sides of the handoff at one node (see the module docstring).

    Args:
        node: the node (its storage, homes, federation, outbox, router, registry).
        timeout: seconds per handoff request.

    Attributes:
        stats: :class:`HandoffStats`.
        refusals: the permanent refusals and stuck users
            (:class:`relay.services.handoff_refusals.Refusals`).
        incoming: the new-home side (:class:`relay.services.handoff_in.HandoffIn`).
        drained: set once this node has nothing left to hand over and told every
            node of the new ring so (at once when no reshape is unfinished).
    """

    def __init__(self, node: Node, *, timeout: float = REQUEST_TIMEOUT) -> None:
        self._node = node
        self._homes = node.homes
        self._storage = node.storage
        self._log = node.log
        self._timeout = timeout
        self._prefix = mark_prefix(node.homes.version)
        self._unconfirmed: dict[str, str] = {}  # users with an out/ marker: done not confirmed
        self.stats = HandoffStats()
        self.refusals = Refusals(node.log)
        self.drained = trio.Event()
        self.incoming = HandoffIn(node, self._prefix, self.stats)

    @property
    def remaining(self) -> int:
        """Users still to hand over."""
        return len(self._homes.outgoing)

    def waiting_for(self) -> list[str]:
        """Nodes of the previous ring that have not said ``handoff_complete`` to this
        (new-ring) node yet."""
        homes = self._homes
        if homes.previous is None or not homes.in_ring:
            return []
        return sorted(n.id for n in homes.previous.nodes
                      if n.id != homes.node_id and n.id not in homes.complete)

    @property
    def done(self) -> bool:
        """True when no reshape is unfinished at this node: nothing left to hand over,
        every new-ring node told, and nothing more to come from the previous ring."""
        return self.drained.is_set() and not self.waiting_for()

    def progress(self) -> dict[str, object]:
        """The handoff's state for ``/health`` and ``wa-relay status``: ``stuck`` counts
        the users whose new home refused them for good (``stuck_by``: per new home),
        ``stuck_users`` lists the first :data:`~relay.services.handoff_refusals.STATUS_USERS`
        of them (``user_id``, ``peer``, ``code``, ``message``, ``attempts``, ``since``)."""
        by_peer = self.refusals.stuck_by_peer()
        return {
            "reshaping": self._homes.previous is not None, "done": self.done,
            "remaining": self.remaining, "waiting_for": self.waiting_for(),
            "users_out": self.stats.users, "envelopes_out": self.stats.envelopes,
            "bytes_out": self.stats.bytes, "users_in": self.stats.users_in,
            "stuck": sum(by_peer.values()), "stuck_by": by_peer,
            "stuck_users": [r.as_dict() for r in self.refusals.stuck(STATUS_USERS)],
        }

    # ------------------------------------------------------------ start

    async def load(self) -> None:
        """Read the markers and find the outgoing users (before the node serves).

        Raises:
            StorageError: the storage cannot be read.
        """
        homes = self._homes
        if homes.previous is None:
            self.drained.set()
            return
        for name, value in (await self._storage.marks(self._prefix)).items():
            kind, _, key = name[len(self._prefix):].partition("/")
            if kind == "in":
                homes.done.add(key)
            elif kind == "complete":
                homes.complete.add(key)
            elif kind == "out":
                self._unconfirmed[key] = value.decode()
        after, strays = "", 0
        while users := await self._storage.list_users(after, EXPORT_PAGE):
            for user in users:
                dest = homes.ring.home(user).id
                if dest == homes.node_id:
                    continue
                if homes.previous.home(user).id != homes.node_id:
                    strays += 1  # never its home: the real home's state must not be reset
                    continue
                homes.outgoing[user] = dest
            after = users[-1]
        if strays:
            self._log.warning("handoff: %d user(s) with state here were not homed here "
                              "before the reshape either; left alone", strays)
        for user, dest in self._unconfirmed.items():
            homes.outgoing[user] = dest
            await homes.begin_move(user)  # never served here again before done is answered
        await reroute_removed(self._node)
        if homes.outgoing:
            self._log.info("handoff: %d user(s) to hand over to their new homes",
                           len(homes.outgoing))

    # ------------------------------------------------------------ old home

    async def run(self) -> None:
        """Hand every outgoing user over, then tell every new-ring node; until cancelled
        or done (see the module docstring)."""
        if self._homes.previous is None:
            return
        delays = PEER_BACKOFF.delays()
        while self._homes.outgoing:
            progress, tried = False, False
            for user in sorted(self._homes.outgoing):
                if self.refusals.is_stuck(user) and not self._retry_due(user):
                    continue
                tried = True
                progress |= await self._move(user)
            if self._homes.outgoing:
                await trio.sleep(0 if progress else next(delays) if tried else STUCK_POLL)
        await self._announce()
        self.drained.set()
        self._log.info("handoff: done (%d users, %d envelopes, %d bytes handed over)",
                       self.stats.users, self.stats.envelopes, self.stats.bytes)

    def _link_session(self, dest: str) -> tuple[object, bool]:
        """The current session of the link to ``dest`` (an object replaced every time
        the link goes down) and whether it is up."""
        link = self._node.federation.links.get(dest)
        if link is None:
            return None, False
        return link.connected, link.is_up

    def _retry_due(self, user: str) -> bool:
        dest = self._homes.outgoing[user]
        return self.refusals.retry_due(user, *self._link_session(dest))

    async def _move(self, user: str) -> bool:
        homes, dest = self._homes, self._homes.outgoing[user]
        if user not in self._unconfirmed:
            await homes.begin_move(user)
        url = homes.node(dest).url  # type: ignore[union-attr]
        for session in self._node.registry.sessions_of(user):
            session.move(url)
        handed = False
        try:
            if user not in self._unconfirmed:
                envelopes, size, entries = await self._copy(user, dest)
                await self._storage.set_mark(f"{self._prefix}out/{user}", dest.encode())
                self._unconfirmed[user] = dest
            else:
                envelopes, size, entries = 0, 0, await self._outbox_of(user)
            answer = await self._request(dest, HandoffDone(id=0, user_id=user))
            if isinstance(answer, Error):  # refused: the new home does not serve the user
                refusal = RelayError.from_frame(answer)
                put_off = refusal.code == ErrorCode.UNAVAILABLE
                if put_off or permanent(refusal):  # (else held: done is sent again)
                    await self._storage.set_mark(f"{self._prefix}out/{user}", None)
                    del self._unconfirmed[user]
                if not put_off:
                    raise refusal
                # unavailable: requests in flight; later, from scratch
                self._log.info("handoff of %s to %s put off: %s", user[:8], dest, answer.message)
                return False
            gone = await self._storage.delete_user(user)
            for media_id in await self._media_of(user):
                await self._storage.media_delete(media_id)
            await self._node.outbox.delete_entries(entries)
            await self._storage.set_mark(f"{self._prefix}out/{user}", None)
            del self._unconfirmed[user]
            self._node.directory.forget(user)
            handed = True
            self.refusals.cleared(user)
            self.stats.users += 1
            self.stats.envelopes += max(envelopes, gone)
            self.stats.bytes += size
            self._log.info("handoff: %s handed to %s (%d envelopes)", user[:8], dest,
                           max(envelopes, gone))
            return True
        except (LinkDown, RelayError, StorageError) as exc:
            if permanent(exc) and user not in self._unconfirmed:  # a refusal, not held
                assert isinstance(exc, RelayError)
                self.refusals.refused(user, dest, exc, self._link_session(dest)[0])
                return False
            self._log.info("handoff of %s to %s: %s; retrying", user[:8], dest, exc)
            return False
        finally:
            if handed or user not in self._unconfirmed:
                homes.end_move(user, handed_over=handed)

    async def _request(self, dest: str, frame: Frame) -> Frame:
        """The new home's ``ok``; for ``handoff_done`` also its ``error`` (a refusal:
        the caller clears the marker first).

        Raises:
            LinkDown: no answer; RelayError: a refusal, or another answer.
        """
        answer = await request_within(self._node.federation, dest, frame, self._timeout)
        if isinstance(answer, Error):
            if isinstance(frame, HandoffDone):
                return answer
            raise RelayError.from_frame(answer)
        if not isinstance(answer, Ok):
            raise RelayError(ErrorCode.INTERNAL, f"unexpected answer {answer.TYPE!r} from {dest}")
        return answer

    async def _outbox_of(self, user: str) -> list[OutboxEntry]:
        entries = []
        limits = self._node.limits.for_peers()
        for entry in await self._storage.outbox_list(None, limit=1 << 20):
            try:
                frame = read_frame(entry.payload, limits)
            except RemoteProtocolError:
                continue
            if isinstance(frame, Forward | GroupForward) and frame.sender_user == user:
                entries.append(entry)
        return entries

    async def _copy(self, user: str, dest: str) -> tuple[int, int, list[OutboxEntry]]:
        """Send the user's state and outbox entries; ``(envelopes, bytes, entries)``."""
        budget = self._node.limits.max_peer_frame - PUT_HEADER
        start, envelopes, size, first = 0, 0, 0, True
        batch: list[Record] = []
        batch_bytes = 0

        async def flush(outbox: list[bytes]) -> None:
            nonlocal first, start, batch, batch_bytes
            await self._request(dest, HandoffPut(id=0, user_id=user, start=start, reset=first,
                                                 records=encode_records(batch), outbox=outbox))
            start += len(batch)
            first, batch, batch_bytes = False, [], 0

        page_start = 0
        while True:
            page = await self._storage.export_user(user, start=page_start, limit=EXPORT_PAGE)
            page_start += len(page)
            for r in page:
                n = len(r.value) + len(r.key) + 32
                if batch and batch_bytes + n > budget:
                    await flush([])
                batch.append(_to_record(r))
                batch_bytes += n
                if r.kind == "item":
                    envelopes += 1
                    size += len(r.value)
            if len(page) < EXPORT_PAGE:
                break
        entries = await self._outbox_of(user)
        outbox: list[bytes] = []
        outbox_bytes = 0
        for entry in entries:
            # the records already in the batch count too, and every entry adds its bin
            # header; an array holds at most OUTBOX_PER_PUT (the decoder's max_array)
            n = len(entry.payload) + ENTRY_OVERHEAD
            if (batch or outbox) and (batch_bytes + outbox_bytes + n > budget
                                      or len(outbox) >= OUTBOX_PER_PUT):
                await flush(outbox)
                outbox, outbox_bytes = [], 0
            outbox.append(entry.payload)
            outbox_bytes += n
        await flush(outbox)  # at least one put, even for a user with nothing but a name
        for media_id in await self._media_of(user):
            size += await self._copy_media(user, dest, media_id)
        return envelopes, size, entries

    async def _media_of(self, user: str) -> list[bytes]:
        ids: list[bytes] = []
        while batch := await self._storage.media_owned(user, ids[-1] if ids else b"", 256):
            ids += batch
        return ids

    async def _copy_media(self, user: str, dest: str, media_id: bytes) -> int:
        """Send one complete blob in chunks; its size (0 if it went meanwhile)."""
        info = await self._storage.media_status(media_id)
        if info is None or not info.complete:
            return 0
        offset = 0
        while True:
            chunk = await self._storage.media_read(media_id, offset, MEDIA_CHUNK)
            if chunk is None:
                return 0
            await self._request(dest, HandoffMedia(id=0, user_id=user, media_id=media_id,
                                                   size=info.size, offset=offset, chunk=chunk))
            offset += len(chunk)
            if offset >= info.size:
                return info.size

    async def _announce(self) -> None:
        """``handoff_complete`` to every node of the new ring, until each answered."""
        homes = self._homes
        pending = [n.id for n in homes.ring.nodes if n.id != homes.node_id]
        delays = PEER_BACKOFF.delays()
        while pending:
            for dest in list(pending):
                try:
                    await self._request(dest, HandoffComplete(id=0, ring_version=homes.version))
                except (LinkDown, RelayError) as exc:
                    self._log.debug("handoff_complete to %s: %s", dest, exc)
                    continue
                pending.remove(dest)
            if pending:
                await trio.sleep(next(delays))

    async def requeue(self, parts: list[Forward | GroupForward]) -> None:
        """See :func:`relay.services.requeue.requeue`."""
        await requeue(self._node, parts)

    async def rerouted(self, parts: list[Forward | GroupForward], dest: str) -> None:
        """``dest`` answered ``moved`` for ``parts``: it does not hold their recipients
        (any more), so those it was the old home of are served here or at their ring
        home now; send the parts there (:attr:`relay.services.outbox.Outbox.reroute`)."""
        for part in parts:
            for r in part.recipients:
                old = self._homes.old_home(r.user_id)
                if old is not None and old.id == dest:
                    self._homes.done.add(r.user_id)
        await requeue(self._node, parts)

