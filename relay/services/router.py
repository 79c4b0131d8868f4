"""The send path: group recipients by home node, store locally or forward, in batches.

A connection hands the router a *run* of consecutive ``send`` / ``group_send``
requests of one device (:meth:`Router.send_batch`, up to the connection's
window). For every request the sender's home splits the recipients by home
node into *parts* (a ``forward`` or ``group_forward`` per home, id 0), then:

* the parts of users homed here are checked one by one against every user's
  current device list (:meth:`Router.check_local`) and all accepted ones are
  written with **one** ``storage.enqueue_many`` call, in request order, each
  part atomic and deduplicated by ``(sender_user, msg_id)``
  (:meth:`Router.store_parts`);
* the parts for other homes are handed, in request order, to the per-destination
  lanes of :class:`relay.services.forwarding.Forwarding`, which send them in
  ``forward_batch`` frames (or to the durable outbox).

Before any of that, each request is checked against its sender's limits
(:mod:`relay.services.limits`): its fan-out (body bytes times copies) against the
sender quota, then the ``send`` (copies) and ``send_bytes`` token buckets of the
account and of the source address; a refused request is answered
``quota_exceeded`` / ``rate_limited`` and nothing of it is routed. The recipients
of an accepted request are recorded as the sender's correspondents (their copies
from the sender are then exempt from share bounds here). Every stored part is
charged to its sender (and forwarding node) under the byte quotas of
:meth:`relay.services.limits.QueuePolicy.quota_for`.

Each request is answered on its own: ``stored`` when every home stored its
part, ``queued`` when some part went to the outbox, else the first refusal in
recipient order (e.g. ``stale_devices``); when other homes stored (or queued)
their parts, that refusal is a *partial* one: its ``refused_users`` lists the
recipient users whose homes did not store it (fault-suite finding 13). A run returns only once every part of
it has its outcome, so the runs of one connection are applied strictly one
after the other (docs/protocol.md, "Order").

**A refused send leaves no copies on the sender's other devices.** When a run
has parts for other homes *and* parts homed here (the copies for the sender's own
other devices, or local recipients), the local parts are written only once the
other homes have answered, and not for a request that another home refused: a
send answered with a refusal is then in no queue of this home (and a client that
resends it with the same ``msg_id`` is deduplicated where it was stored). What
stays possible is the reverse, rarer case: another home stored its part and this
home then refuses its own (``storage_full``, ``queue_full``); the sender gets the
refusal, and a resend with the same ``msg_id`` is deduplicated over there.

**Order across refusals.** Within one :meth:`Router.store_parts` call, once a part
is refused with a retryable code, the same sending device's later parts to any of
the same devices are refused with that code too (nothing written): checked here
for the checks before storage, and by ``enqueue_many`` (each request carries its
``sender``) for the storage's own refusals. So a retried part can never land
behind a later one (docs/protocol.md, "Order", rule 5).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Awaitable, Callable

from relay.config.ring import Ring
from relay.errors import KNOWN_REFUSALS, RETRYABLE_CODES, RelayError, relay_error_from
from relay.protocol import ErrorCode
from relay.protocol.frames import (
    Envelope,
    Error,
    Forward,
    Frame,
    GroupForward,
    GroupSend,
    Send,
    Sent,
)
from relay.protocol.stored import encode_envelope
from relay.services.directory import Directory
from relay.services.groups import GROUP_KIND, group_items, group_members
from relay.services.homes import Homes
from relay.services.limits import QueuePolicy, RateLimits
from storage import EnqueueRequest, Storage

Part = Forward | GroupForward
Outcome = str | RelayError
ChainKey = tuple[str, int, str, int]
"""``(sender user, sender device, receiving user, receiving device)``."""
Blocked = dict[ChainKey, RelayError]
"""Retryable refusals so far, by chain key (see "Order across refusals" above)."""
"""What became of one part: ``"stored"``, ``"queued"`` or the refusal."""


def dedupe_id(sender_user: str, msg_id: bytes) -> bytes:
    """The storage dedupe id of one message at one home."""
    return b"msg\0" + sender_user.encode() + b"\0" + msg_id


def now_ms() -> int:
    """The time a home accepts a message: milliseconds since the Unix epoch."""
    return int(time.time() * 1000)


def part_members(part: Part) -> list[tuple[str, list[int]]]:
    """``(user_id, device_ids)`` per recipient user of a part."""
    if isinstance(part, GroupForward):
        return group_members(part)
    return [(r.user_id, [c.device_id for c in r.copies]) for r in part.recipients]


def part_items(part: Part) -> list[tuple[str, int, bytes]]:
    """The stored envelopes ``(user_id, device_id, envelope)`` of a part."""
    if isinstance(part, GroupForward):
        return group_items(part)
    items = []
    for r in part.recipients:
        for c in r.copies:
            env = Envelope(msg_id=part.msg_id, sender_user=part.sender_user,
                           sender_device=part.sender_device, ts=part.ts, kind="olm", body=c.body)
            items.append((r.user_id, c.device_id, encode_envelope(env)))
    return items


class _Forwarding:
    """What the router needs from :class:`relay.services.forwarding.Forwarding` (no import cycle)."""

    def submit(self, dest: str, parts: list[Part]) -> Callable[[], Awaitable[list[Outcome]]]:
        """Queue ``parts`` for node ``dest`` and return an awaitable of their outcomes."""
        raise NotImplementedError


class Router:
    """Routes runs of ``send`` / ``group_send`` and stores parts for local users.

    Args:
        node_id: this node's id.
        ring: the cluster ring.
        storage, directory: local state.
        forwarding: the per-destination lanes to other homes (set with
            :meth:`attach` when built after the router).
        notify: ``notify(user_id, device_id)`` after envelopes were enqueued.
        max_queue: bound of one device queue.
        on_stale: ``await on_stale(user_id, sender_user)`` before a ``stale_devices``
            refusal hands ``user_id``'s list to ``sender_user`` (records a watcher).
        policy: byte quotas and correspondents (``None``: no quotas).
        rates: token buckets (``None``: no rate limits).
    """

    def __init__(
        self, node_id: str, ring: Ring | Homes, storage: Storage, directory: Directory,
        notify: Callable[[str, int], None], *, max_queue: int,
        forwarding: _Forwarding | None = None,
        on_stale: Callable[[str, str], Awaitable[None]] | None = None,
        policy: QueuePolicy | None = None, rates: RateLimits | None = None,
    ) -> None:
        self._node_id = node_id
        self._ring = self._homes = ring if isinstance(ring, Homes) else Homes(node_id, ring)
        self._storage = storage
        self._directory = directory
        self._forwarding = forwarding
        self._notify = notify
        self._max_queue = max_queue
        self._on_stale = on_stale
        self._policy = policy
        self._rates = rates

    def attach(self, forwarding: _Forwarding) -> None:
        """Set the forwarding lanes (they need the router's outbox; built after it)."""
        self._forwarding = forwarding

    # ------------------------------------------------------------ a device's run of sends

    async def send_batch(
        self, sender_user: str, sender_device: int, frames: list[Send | GroupSend], *,
        address: str | None = None,
    ) -> list[Frame]:
        """Route a run of one device's ``send`` / ``group_send`` requests, in order.

        Args:
            sender_user, sender_device: the authenticated sending device.
            frames: the run, in reading order.
            address: the connection's address key (for per-address rate limits).

        Returns:
            One answer per request, in order: ``sent {status}`` or ``error``.
            Refusals are answers, never raised.
        """
        ts = now_ms()
        answers: list[Frame | None] = [None] * len(frames)
        plans: list[list[str]] = [[] for _ in frames]  # per request: its homes, in recipient order
        local: list[tuple[int, Part]] = []
        remote: dict[str, list[tuple[int, Part]]] = {}
        costs = [_costs(frame) for frame in frames]
        rated = False  # the whole run's tokens taken at once (the common case)
        if self._rates is not None and len(frames) > 1:
            try:
                self._rates.take_many([("send", sum(c for c, _ in costs)),
                                       ("send_bytes", sum(b for _, b in costs))],
                                      account=sender_user, address=address)
                rated = True
            except RelayError:
                pass  # some frames of the run pass: take them one by one below
        outcomes: list[dict[str, Outcome]] = [{} for _ in frames]
        users_at: list[dict[str, list[str]]] = [{} for _ in frames]  # per request, by home
        waits = {}
        users = {r.user_id for f in frames for r in f.recipients}
        async with self._homes.hold(users):  # no user's handoff starts between split and store
            for i, frame in enumerate(frames):
                try:
                    self._check_limits(costs[i], sender_user, address, rated=rated)
                    parts = self._split(frame, sender_user, sender_device, ts)
                    if self._policy is not None:
                        await self._policy.note_sent(sender_user,
                                                     [r.user_id for r in frame.recipients])
                except KNOWN_REFUSALS as exc:
                    answers[i] = relay_error_from(exc).to_frame(frame.id)  # type: ignore[union-attr]
                    continue
                for dest, part in parts:
                    plans[i].append(dest)
                    users_at[i][dest] = [u for u, devs in part_members(part) if devs]
                    (local if dest == self._node_id else remote.setdefault(dest, [])).append(
                        (i, part))
            if remote:
                assert self._forwarding is not None, "Router.attach() was not called"
                for dest, entries in remote.items():
                    waits[dest] = self._forwarding.submit(dest, [p for _, p in entries])
            for dest, wait in waits.items():  # first: a refused request stores nothing here
                for (i, _), outcome in zip(remote[dest], await wait(), strict=True):
                    outcomes[i][dest] = outcome
            refused = {i for i, got in enumerate(outcomes)
                       if any(isinstance(o, RelayError) for o in got.values())}
            keep = [(i, p) for i, p in local if i not in refused]
            if keep:
                results = await self._store_held([p for _, p in keep])
                for (i, _), result in zip(keep, results, strict=True):
                    outcomes[i][self._node_id] = result if result is not None else "stored"
        skipped = {i for i, _ in local if self._node_id not in outcomes[i]}  # not written
        for i in skipped:
            outcomes[i][self._node_id] = "stored"  # a refusal elsewhere answers the request
        for i, frame in enumerate(frames):
            if answers[i] is None:
                answers[i] = _answer(frame.id, [outcomes[i][d] for d in plans[i]])
                if isinstance(answers[i], Error):
                    answers[i] = _partial(answers[i], users_at[i], outcomes[i],
                                          self._node_id if i in skipped else None)
        return answers  # type: ignore[return-value]

    def _check_limits(self, costs: tuple[int, int], sender_user: str, address: str | None,
                      *, rated: bool) -> None:
        """Fan-out quota, then (unless the run's tokens were ``rated`` already) the
        ``send`` and ``send_bytes`` buckets (nothing taken unless both pass)."""
        copies, fanout = costs
        if self._policy is not None:
            self._policy.check_fanout(fanout)
        if self._rates is not None and not rated:
            self._rates.take_many([("send", copies), ("send_bytes", fanout)],
                                  account=sender_user, address=address)

    def _split(
        self, frame: Send | GroupSend, sender_user: str, sender_device: int, ts: int
    ) -> list[tuple[str, Part]]:
        if not frame.recipients:
            what = "a group send" if isinstance(frame, GroupSend) else "a send"
            raise RelayError(ErrorCode.BAD_REQUEST, f"{what} needs at least one recipient")
        groups: dict[str, list] = {}
        for r in frame.recipients:
            self._directory.check_user_id(r.user_id)
            groups.setdefault(self._homes.home(r.user_id).id, []).append(r)
        if isinstance(frame, GroupSend):
            return [(dest, GroupForward(id=0, msg_id=frame.msg_id, sender_user=sender_user,
                                        sender_device=sender_device, ts=ts, body=frame.body,
                                        recipients=group))
                    for dest, group in groups.items()]
        return [(dest, Forward(id=0, msg_id=frame.msg_id, sender_user=sender_user,
                               sender_device=sender_device, ts=ts, recipients=group))
                for dest, group in groups.items()]

    # ------------------------------------------------------------ storing parts homed here

    async def store_parts(
        self, parts: list[Part], *, peer_id: str | None = None, blocked: Blocked | None = None,
        queued: bool = False,
    ) -> list[RelayError | None]:
        """Check every part and durably enqueue the accepted ones in one ``enqueue_many``
        call, in order; wake the devices' pushers.

        Args:
            parts: forwards / group forwards whose recipients are all homed here.
            peer_id: the node the parts came from: each part's ``sender_user`` must
                be homed there (``None``: built here from an authenticated device).
            blocked: the retryable refusals of earlier calls that the same order
                covers (one ``forward_batch`` stored in several calls): read, and
                updated with this call's retryable refusals.
            queued: every part was already answered ``queued`` to its sender (a
                ``forward_batch`` with ``queued: true``): copies for recipient
                devices removed since are dropped (:meth:`check_local`).

        Returns:
            Per part, in order: ``None`` (stored, or already stored: deduplicated by
            ``(sender_user, msg_id)``) or the :class:`RelayError` refusing it alone
            (``bad_request``, ``unknown_user``, ``stale_devices``, ``queue_full``,
            ``storage_full``, ``storage_unavailable``, ``moved``: the user was just
            handed to another node by a reshape).

        During a reshape (docs/protocol.md, "Handoff"), recipients still being handed
        to this node are passed on to their old home (the outcome is that node's, or
        ``queued`` in the outbox), and a peer that is the new home of every recipient
        may pass on parts of any sender.
        """
        users = {r.user_id for part in parts for r in part.recipients}
        relays: dict[str, list[tuple[int, Part]]] = {}
        async with self._homes.hold(users):
            results = await self._store_held(parts, peer_id=peer_id, relays=relays,
                                             blocked=blocked, queued=queued)
        if not relays:
            return results
        assert self._forwarding is not None, "Router.attach() was not called"
        waits = {dest: self._forwarding.submit(dest, [p for _, p in entries])
                 for dest, entries in relays.items()}
        try:
            for dest, entries in relays.items():  # users still being handed to this node
                outcomes = await waits[dest]()
                moved = [(i, p) for (i, p), o in zip(entries, outcomes, strict=True)
                         if isinstance(o, RelayError) and o.code is ErrorCode.MOVED]
                for _, part in moved:  # the old home does not hold them (any more)
                    self._homes.done.update(r.user_id for r in part.recipients)
                retried = dict(zip([i for i, _ in moved],
                                   await self.store_parts([p for _, p in moved]), strict=True))
                for (i, _), outcome in zip(entries, outcomes, strict=True):
                    outcome = retried.get(i, outcome)
                    if isinstance(outcome, RelayError) and results[i] is None:
                        results[i] = outcome
        finally:
            for dest, entries in relays.items():
                self._homes.relaying[dest] -= len(entries)
        return results

    async def _store_held(
        self, parts: list[Part], *, peer_id: str | None = None,
        relays: dict[str, list[tuple[int, Part]]] | None = None, blocked: Blocked | None = None,
        queued: bool = False,
    ) -> list[RelayError | None]:
        """:meth:`store_parts` while the recipients are held (:meth:`Homes.hold`);
        parts (or their recipients) for users still being handed to this node go
        into ``relays`` by their old home instead."""
        results: list[RelayError | None] = [None] * len(parts)
        requests: list[EnqueueRequest] = []
        accepted: list[tuple[int, list[tuple[str, int, bytes]]]] = []
        blocked = {} if blocked is None else blocked  # see "Order across refusals"
        keys_of: list[set[ChainKey]] = []
        for i, part in enumerate(parts):
            keys = _chain_keys(part)
            keys_of.append(keys)
            hit = next((blocked[k] for k in keys if k in blocked), None)
            if hit is not None:
                results[i] = RelayError(hit.code, "not stored: an earlier message of the same "
                                        f"sending device was refused ({hit.message or hit.code.value})")
                blocked.update(dict.fromkeys(keys, hit))
                continue
            try:
                if peer_id is not None and not self._relayed_to(part, peer_id):
                    self._check_not_passed_on(part, peer_id)
                    self.check_from_peer(part.sender_user, peer_id)
                if relays is not None:
                    part = self._relay_incoming(i, part, relays)
                    if part is None:
                        continue
                members = part_members(part)
                drop = await self.check_local(part.sender_user, part.sender_device, members,
                                              queued=queued)
                items = part_items(part)
                if drop:
                    items = [it for it in items if (it[0], it[1]) not in drop]
                charges, quota = (), None
                if self._policy is not None:
                    charges, quota = await self._policy.quota_for(
                        part.sender_user, [u for u, _ in members], peer_id)
            except KNOWN_REFUSALS as exc:
                err = results[i] = relay_error_from(exc)
                if err is not None and err.code.value in RETRYABLE_CODES:
                    blocked.update(dict.fromkeys(keys, err))
                continue
            if not items:
                continue
            accepted.append((i, items))
            requests.append(EnqueueRequest(items, dedupe=dedupe_id(part.sender_user, part.msg_id),
                                           max_queue=self._max_queue, charges=charges,
                                           quota=quota,
                                           sender=(part.sender_user, part.sender_device)))
        if not requests:
            return results
        try:
            answers = await self._storage.enqueue_many(requests)
        except KNOWN_REFUSALS as exc:  # the whole call failed (e.g. the storage is gone)
            err = relay_error_from(exc)
            for i, _ in accepted:
                results[i] = err
                if err is not None:
                    blocked.update(dict.fromkeys(keys_of[i], err))
            return results
        for (i, items), answer in zip(accepted, answers, strict=True):
            if isinstance(answer, Exception):
                err = relay_error_from(answer) or RelayError(
                    ErrorCode.INTERNAL, "the node could not store the message")
                if err.code is ErrorCode.QUOTA_EXCEEDED and self._policy is not None:
                    err.retry_after_ms = self._policy.retry_after_ms
                results[i] = err
                blocked.update(dict.fromkeys(keys_of[i], err))
            elif answer is not None:
                for user_id, device_id, _ in items:
                    self._notify(user_id, device_id)
        return results

    async def check_local(
        self, sender_user: str, sender_device: int, members: list[tuple[str, list[int]]],
        *, queued: bool = False,
    ) -> set[tuple[str, int]]:
        """Check one home's part before anything of it is written.

        Args:
            sender_user, sender_device: the sending device (it needs no copy).
            members: ``(user_id, device_ids)`` per recipient user.
            queued: the part was already answered ``queued`` to its sender (an
                outbox drain): copies for devices removed since are dropped
                instead of refusing the part (docs/protocol.md, "Order", rule 6).

        Returns:
            ``(user_id, device_id)`` of the copies to drop (empty unless ``queued``).

        Raises:
            RelayError: ``bad_request`` (malformed, not homed here, a user twice),
                ``unknown_user``, ``stale_devices`` (after ``on_stale`` recorded
                the sender's user as a watcher of that user's list).
        """
        seen: set[str] = set()
        drop: set[tuple[str, int]] = set()
        for user_id, device_ids in members:
            self._directory.check_user_id(user_id)
            if user_id in seen:
                raise RelayError(ErrorCode.BAD_REQUEST, "a user appears twice in recipients")
            seen.add(user_id)
            if not self._directory.is_home(user_id):
                if self._homes.previous is not None:  # handed over during a reshape
                    home = self._homes.home(user_id)
                    raise RelayError(ErrorCode.MOVED, f"the home of this user is {home.id}",
                                     url=home.url, user_id=user_id)
                raise RelayError(ErrorCode.BAD_REQUEST, "recipient is not homed at this node",
                                 user_id=user_id)
            try:
                gone = await self._directory.check_devices(
                    user_id, device_ids, (sender_user, sender_device), removed_ok=queued)
            except RelayError as exc:
                if exc.code is ErrorCode.STALE_DEVICES and self._on_stale is not None:
                    await self._on_stale(user_id, sender_user)
                raise
            drop.update((user_id, d) for d in gone)
        return drop

    def _relayed_to(self, part: Part, peer_id: str) -> bool:
        """True if every recipient of ``part`` is being handed from here to ``peer_id``
        (the new home passes requests for them on; docs/protocol.md, "Handoff")."""
        outgoing = self._homes.outgoing
        return all(outgoing.get(r.user_id) == peer_id for r in part.recipients)

    def _check_not_passed_on(self, part: Part, peer_id: str) -> None:
        """Raise ``moved`` for a part that the recipients' new home ``peer_id`` passed
        on to this old home although none of them is held here (any more): the new
        home then stores it itself."""
        homes = self._homes
        if homes.previous is None or not part.recipients:
            return
        if all(homes.ring.home(r.user_id).id == peer_id and r.user_id not in homes.outgoing
               for r in part.recipients):
            home = homes.node(peer_id)
            raise RelayError(ErrorCode.MOVED, f"the home of these users is {peer_id}",
                             url=home.url if home else None,
                             user_id=part.recipients[0].user_id)

    def _relay_incoming(
        self, i: int, part: Part, relays: dict[str, list[tuple[int, Part]]]
    ) -> Part | None:
        """Move the recipients of ``part`` that are still being handed to this node into
        ``relays`` (by old home); return the rest (``None`` if nothing is left)."""
        homes = self._homes
        if homes.previous is None:
            return part
        by_dest: dict[str, list] = {}
        for r in part.recipients:
            dest = homes.home(r.user_id).id if homes.incoming(r.user_id) else self._node_id
            by_dest.setdefault(dest, []).append(r)
        for dest, recipients in by_dest.items():
            if dest != self._node_id:
                relays.setdefault(dest, []).append(
                    (i, dataclasses.replace(part, recipients=recipients)))  # type: ignore[type-var]
                homes.relaying[dest] = homes.relaying.get(dest, 0) + 1
        mine = by_dest.get(self._node_id)
        if mine is None:
            return None
        return part if len(mine) == len(part.recipients) else dataclasses.replace(
            part, recipients=mine)  # type: ignore[type-var]

    def check_from_peer(self, sender_user: str, peer_id: str) -> None:
        """Raise ``bad_request`` unless ``sender_user`` is well-formed and homed at
        ``peer_id`` (a peer may only forward what its own users sent)."""
        self._directory.check_homed_at(sender_user, peer_id, "sender")


def _chain_keys(part: Part) -> set[ChainKey]:
    """``(sender user, sender device, user, device)`` per receiving device of a part."""
    try:
        members = part_members(part)
    except (TypeError, ValueError, AttributeError):  # malformed: refused by the checks
        return set()
    return {(part.sender_user, part.sender_device, u, d) for u, devs in members for d in devs}


def _costs(frame: Send | GroupSend) -> tuple[int, int]:
    """``(copies, fan-out bytes)`` of one request: its rate-limit tokens."""
    if isinstance(frame, GroupSend):
        copies = sum(len(r.device_ids) for r in frame.recipients)
        return copies, copies * len(frame.body)
    return (sum(len(r.copies) for r in frame.recipients),
            sum(len(c.body) for r in frame.recipients for c in r.copies))


def _answer(request_id: int, outcomes: list[Outcome]) -> Frame:
    for outcome in outcomes:
        if isinstance(outcome, RelayError):
            return outcome.to_frame(request_id)
    return Sent(id=request_id, status="queued" if "queued" in outcomes else "stored")


def _partial(answer: Error, users_at: dict[str, list[str]],
             outcomes: dict[str, Outcome], unwritten: str | None) -> Error:
    """``answer`` (a request's first refusal) naming, when some other home stored or
    queued its part, the recipient users whose homes did not (``refused_users``).

    Args:
        answer: the refusal chosen by :func:`_answer`.
        users_at: per home node id, the recipient user ids of its part that have
            devices to store for (a group's sender user may have none).
        outcomes: per home node id, its part's outcome.
        unwritten: this node's id when its part was not written (another home
            refused), else ``None``.
    """
    refused_homes = {d for d, o in outcomes.items() if isinstance(o, RelayError)}
    if unwritten is not None:
        refused_homes.add(unwritten)
    if not set(outcomes) - refused_homes:
        return answer  # nothing of it was stored anywhere
    refused = sorted({u for d in refused_homes for u in users_at.get(d, ())})
    total = sum(len(users) for users in users_at.values())
    return dataclasses.replace(answer, refused_users=refused, message=(
        f"{answer.message or answer.code}; stored at the homes of the other recipients, "
        f"not for {len(refused)} of {total} recipient user(s): send it again "
        "with the same msg_id (deduplicated where it was stored)"))


def outcome_of(answer: Frame, dest: str) -> Outcome:
    """The outcome of one part from a peer's per-item answer (``ok`` or ``error``)."""
    if isinstance(answer, Error):
        return RelayError.from_frame(answer)
    if answer.TYPE == "ok":
        return "stored"
    return RelayError(ErrorCode.INTERNAL, f"unexpected answer {answer.TYPE!r} from {dest}")


__all__ = ["GROUP_KIND", "Outcome", "Part", "Router", "dedupe_id", "now_ms", "outcome_of",
           "part_items", "part_members"]
