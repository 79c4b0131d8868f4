"""Linking mailboxes: one-off provisioning mailboxes for companion devices.

Flow (docs/protocol.md, "Linking a companion device")::

    new  -> node M   link_open {device_info}            -> link_opened {mailbox_id, node_id M, expires_in}
    prim -> home H   link_fetch {M, mailbox_id}          -> link_info {device_info}   (H forwards to M)
    prim -> home H   link_complete {M, mailbox_id, body} -> ok; M pushes link_data {body} to new

A PAKE link (``link_open {short: true}``) gets a 2-byte mailbox id (a number in a
word code) and two more steps: ``link_complete {more: true}`` pushes ``link_data``
and keeps the mailbox open, and the new device answers once with ``link_reply
{body}``, which ``link_fetch`` returns as ``link_info.reply``.

Mailboxes live only in the memory of the node that opened them (no
persistence), owned by :class:`Linking`, which the node owns (no globals). A
mailbox is gone when the first of these happens: ``link_complete`` succeeded
(single use), the opening connection closed (or opened another mailbox), or
``ttl`` seconds passed (``trio.current_time()``, so a ``MockClock`` drives it).
An unknown or expired mailbox answers ``not_found`` and nothing changes. A mailbox
that was *used* (a ``link_complete`` pushed ``link_data`` through it) answers
``already_used`` instead: to a second ``link_complete {more}`` while it is open (a
second approval of a word code: its PAKE exchange is taken), and to anything for
``ttl`` seconds after it closed (a tombstone: at most ``max_open`` are kept, the
oldest dropped first; a short id is not handed out again while it has one). So a
second approval learns that the code was used, not that its exchange failed to
decrypt (docs/protocol.md, "Linking with a word code").
At most ``max_per_owner`` mailboxes are open per remote address (its
:func:`relay.net.admission.address_key`: an IPv4 address or an IPv6 /64), and at
most ``max_open`` per node. When the node is full, the node's mailboxes are
shared fairly among addresses: a ``link_open`` from an address holding ``k``
mailboxes withdraws the oldest mailbox of the address holding the most, if that
address holds at least ``k + 2`` (its device gets ``error not_found``, id 0, and
opens again); otherwise it answers ``rate_limited``. So no set of addresses can
keep a new address from linking unless each of them holds at most one mailbox
(``max_open`` addresses: 1,000 by default), and the per-address cap alone no
longer decides how few addresses fill the node. Finding the holder is a scan of
the addresses (at most ``max_open``), done only when the node is full.
"""

from __future__ import annotations

import math
import os
from collections.abc import Awaitable, Callable

import trio

from relay.config.ring import Ring
from relay.errors import RelayError
from relay.protocol import ErrorCode
from relay.protocol.frames import (
    Error,
    Frame,
    LinkComplete,
    LinkData,
    LinkFetch,
    LinkInfo,
    LinkOpened,
    Ok,
)
from relay.services.federation import Federation, ask_peer

MAILBOX_ID_SIZE = 16  # bytes
SHORT_ID_SIZE = 2  # bytes of a PAKE link's mailbox id (guessing one gives one PAKE attempt)
MAX_DEVICE_INFO = 4096  # bytes
MAX_MAILBOXES = 1000  # open mailboxes per node
MAX_MAILBOXES_PER_OWNER = 8  # open mailboxes per remote address
PEER_TIMEOUT = 5.0  # seconds for a forwarded link_fetch / link_complete
ID_DRAWS = 64  # random draws for a free mailbox id before refusing (2**-64 when half full)

Push = Callable[[Frame], bool]


class Mailbox:
    """One open mailbox; the connection that opened it owns it and calls :meth:`close`.

    Attributes:
        mailbox_id: 16 random bytes. device_info: what ``link_open`` carried.
        expires_at: ``trio.current_time()`` after which it is expired.
        address: the remote address key of the connection that opened it.
    """

    def __init__(self, owner: Linking, mailbox_id: bytes, device_info: bytes, push: Push,
                 expires_at: float, address: str) -> None:
        self._owner = owner
        self.address = address
        self.mailbox_id = mailbox_id
        self.device_info = device_info
        self.push = push
        self.expires_at = expires_at
        self.reply: bytes | None = None
        self.used = False
        """A ``link_complete`` pushed ``link_data`` through it (it served an approval)."""

    @property
    def is_open(self) -> bool:
        """True until closed, used, or pruned after expiry."""
        return self._owner._boxes.get(self.mailbox_id) is self

    def close(self) -> None:
        """Forget the mailbox (idempotent): later fetches and completes get ``not_found``."""
        self._owner._forget(self)


class LinkSlot:
    """The one mailbox a connection may hold (owned by that connection).

    Args:
        linking: the node's mailboxes.
        push: queues a frame on the connection without blocking (for ``link_data``).
        send: sends a frame on the connection (for the expiry notice).
        address: the connection's remote address key (:func:`relay.net.admission.address_key`).
    """

    def __init__(self, linking: Linking, push: Push,
                 send: Callable[[Frame], Awaitable[None]], address: str = "") -> None:
        self._linking = linking
        self._push = push
        self._send = send
        self._address = address
        self._box: Mailbox | None = None
        self._timer = trio.CancelScope()

    def reply(self, body: bytes) -> None:
        """Post the new device's one answer to the held mailbox (``link_reply``).

        Raises:
            RelayError: ``not_found`` (no open mailbox), ``bad_request`` (answered
                already), ``too_large`` (above 4 KiB).
        """
        if self._box is None or not self._box.is_open:
            raise RelayError(ErrorCode.NOT_FOUND, "this connection holds no open mailbox")
        if len(body) > MAX_DEVICE_INFO:
            raise RelayError(ErrorCode.TOO_LARGE, f"a reply exceeds {MAX_DEVICE_INFO} bytes")
        if self._box.reply is not None:
            raise RelayError(ErrorCode.BAD_REQUEST, "this mailbox holds a reply already")
        self._box.reply = body

    def open(self, device_info: bytes, nursery: trio.Nursery, *,
             short: bool = False) -> LinkOpened:
        """Open a mailbox, replacing (closing) the one held before; a task in
        ``nursery`` sends ``error not_found`` (id 0) if it expires unused.

        Raises:
            RelayError: see :meth:`Linking.open` (the old mailbox is closed anyway).
        """
        self.close()
        self._box, opened = self._linking.open(device_info, self._push, self._address,
                                               short=short)
        self._timer = trio.CancelScope()
        nursery.start_soon(self._expire, self._box, self._timer)
        return opened

    def close(self) -> None:
        """Close the held mailbox, if any (idempotent; the connection ends)."""
        self._timer.cancel()
        if self._box is not None:
            self._box.close()
            self._box = None

    async def _expire(self, box: Mailbox, timer: trio.CancelScope) -> None:
        with timer:
            await trio.sleep_until(box.expires_at)
            if box.is_open:
                box.close()
                await self._send(Error(id=0, code=ErrorCode.NOT_FOUND.value,
                                       message="the linking code expired; open a new one"))


class Linking:
    """The linking mailboxes of one node, and forwarding of fetch/complete to other nodes.

    Args:
        node_id: this node's id (the ``node_id`` of its mailboxes).
        ring: the cluster (to tell a known node id from a wrong code).
        federation: peer links, for mailboxes on other nodes.
        ttl: seconds a mailbox lives at most.
        max_open: most open mailboxes on this node (then shared fairly, see above).
        max_per_owner: most open mailboxes per remote address.
        peer_timeout: seconds a forwarded request may take.
    """

    def __init__(
        self, node_id: str, ring: Ring, federation: Federation, *, ttl: float,
        max_open: int = MAX_MAILBOXES, max_per_owner: int = MAX_MAILBOXES_PER_OWNER,
        peer_timeout: float = PEER_TIMEOUT,
    ) -> None:
        self._node_id = node_id
        self._ring = ring
        self._federation = federation
        self.ttl = ttl
        self._max_open = max_open
        self._max_per_owner = max_per_owner
        self._owned: dict[str, dict[bytes, Mailbox]] = {}  # address -> its mailboxes, oldest first
        self._peer_timeout = peer_timeout
        self._boxes: dict[bytes, Mailbox] = {}  # insertion order = expiry order (fixed ttl)
        self._used: dict[bytes, float] = {}  # closed after use -> until when it says so (ditto)

    def __len__(self) -> int:
        """How many mailboxes are open (expired ones not yet pruned included)."""
        return len(self._boxes)

    # ------------------------------------------------------------ local mailboxes

    def open_from(self, address: str) -> int:
        """How many mailboxes remote address ``address`` holds open."""
        return len(self._owned.get(address, ()))

    def _forget(self, box: Mailbox) -> None:
        if self._boxes.get(box.mailbox_id) is box:
            del self._boxes[box.mailbox_id]
            owned = self._owned[box.address]
            del owned[box.mailbox_id]
            if not owned:
                del self._owned[box.address]
            if box.used:  # a tombstone: later requests learn it was used, not "not found"
                self._used.pop(box.mailbox_id, None)
                self._used[box.mailbox_id] = trio.current_time() + self.ttl
                while len(self._used) > self._max_open:
                    del self._used[next(iter(self._used))]

    @staticmethod
    def _retry_after_ms(box: Mailbox) -> int:
        """Milliseconds until ``box`` expires (when a place frees at the latest), >= 1."""
        return max(1, math.ceil((box.expires_at - trio.current_time()) * 1000))

    def _make_room(self, address: str) -> None:
        """Withdraw the oldest mailbox of the address holding the most, if it holds
        at least two more than ``address`` (fair share of a full node).

        Raises:
            RelayError: ``rate_limited``: no address holds that many.
        """
        mine = self.open_from(address)
        _, boxes = max(self._owned.items(), key=lambda kv: len(kv[1]))
        if len(boxes) < mine + 2:
            raise RelayError(ErrorCode.RATE_LIMITED,
                             "too many linking mailboxes are open on this node; retry later",
                             quota="node_mailboxes",
                             retry_after_ms=self._retry_after_ms(next(iter(self._boxes.values()))))
        oldest = next(iter(boxes.values()))
        oldest.close()
        oldest.push(Error(id=0, code=ErrorCode.NOT_FOUND.value,
                          message="the linking code was withdrawn (the node is full and your "
                                  "address holds the most codes); open a new one"))

    def _prune(self) -> None:
        now = trio.current_time()
        while self._boxes:
            first = next(iter(self._boxes.values()))
            if first.expires_at > now:
                break
            self._forget(first)
        while self._used and next(iter(self._used.values())) <= now:
            del self._used[next(iter(self._used))]

    def open(self, device_info: bytes, push: Push, address: str = "", *,
             short: bool = False) -> tuple[Mailbox, LinkOpened]:
        """Open a mailbox for a new device whose connection pushes with ``push``.

        Args:
            device_info: opaque bytes (msgpack ``{ed25519, curve25519, ephemeral,
                name}`` by convention), 1..4096 bytes.
            push: queues a frame on the new device's connection without blocking;
                ``False`` if that connection is gone or saturated.
            address: the remote address key of that connection.
            short: a 2-byte mailbox id, unused among the open ones (a PAKE link).

        Returns:
            The mailbox (the caller closes it when its connection ends) and the
            ``link_opened`` answer (``id`` 0; the caller sets the request id).

        Raises:
            RelayError: ``bad_request`` (empty info), ``too_large`` (info above
                4 KiB), ``rate_limited`` (``quota`` ``address_mailboxes``: ``address``
                holds ``max_per_owner`` mailboxes, or ``node_mailboxes``: ``max_open``
                are open on the node and no address holds two more than ``address``,
                or no short id is free;
                ``retry_after_ms``: until the oldest of those mailboxes expires).
        """
        if not device_info:
            raise RelayError(ErrorCode.BAD_REQUEST, "device_info is empty")
        if len(device_info) > MAX_DEVICE_INFO:
            raise RelayError(ErrorCode.TOO_LARGE, f"device_info exceeds {MAX_DEVICE_INFO} bytes")
        self._prune()
        if self.open_from(address) >= self._max_per_owner:
            oldest = next(iter(self._owned[address].values()))
            raise RelayError(ErrorCode.RATE_LIMITED,
                             "too many linking mailboxes are open from your address; retry later",
                             quota="address_mailboxes", retry_after_ms=self._retry_after_ms(oldest))
        if len(self._boxes) >= self._max_open:
            self._make_room(address)
        mailbox_id = self._free_id(SHORT_ID_SIZE if short else MAILBOX_ID_SIZE)
        box = Mailbox(self, mailbox_id, device_info, push, trio.current_time() + self.ttl, address)
        self._boxes[mailbox_id] = box
        self._owned.setdefault(address, {})[mailbox_id] = box
        opened = LinkOpened(id=0, mailbox_id=mailbox_id, node_id=self._node_id,
                            expires_in=max(1, math.ceil(self.ttl)))
        return box, opened

    def _free_id(self, size: int) -> bytes:
        """A random ``size``-byte id neither open nor a tombstone.

        Raises:
            RelayError: ``rate_limited`` (``quota`` ``node_mailboxes``): no free id in
                :data:`ID_DRAWS` draws; only short ids can run out (at most ``2 *
                max_open`` of 65,536 are taken: a node whose ``max_mailboxes`` is set
                above 32,767 would otherwise spin forever here, its loop blocked).
        """
        for _ in range(ID_DRAWS):
            mailbox_id = os.urandom(size)
            if mailbox_id not in self._boxes and mailbox_id not in self._used:
                return mailbox_id
        oldest = next(iter(self._boxes.values()), None)
        raise RelayError(ErrorCode.RATE_LIMITED,
                         "no free word-code number on this node; retry later",
                         quota="node_mailboxes",
                         retry_after_ms=self._retry_after_ms(oldest) if oldest else 1000)

    def _live(self, mailbox_id: bytes) -> Mailbox:
        self._prune()
        box = self._boxes.get(mailbox_id)
        if box is None and mailbox_id in self._used:
            raise RelayError(ErrorCode.ALREADY_USED,
                             "this linking code was already used: it serves one approval")
        if box is None:
            raise RelayError(ErrorCode.NOT_FOUND,
                             "no such linking code: it is wrong, already used or expired")
        return box

    def fetch(self, mailbox_id: bytes) -> tuple[bytes, bytes | None]:
        """The ``device_info`` and ``reply`` of an open mailbox on this node (it stays open).

        Raises:
            RelayError: ``not_found`` (unknown or expired), ``already_used`` (closed
                after it served an approval, within ``ttl``).
        """
        box = self._live(mailbox_id)
        return box.device_info, box.reply

    def complete(self, mailbox_id: bytes, body: bytes, *, more: bool = False) -> None:
        """Push ``link_data {body}`` to the waiting device and close the mailbox (with
        ``more``: keep it open for the device's ``link_reply``). Either way the mailbox
        is *used* from then on.

        Raises:
            RelayError: ``not_found`` (unknown or expired, or the new device's
                connection is gone), ``already_used`` (closed after use, or ``more`` on
                a mailbox that was used: a second approval of a word code); nothing
                changes then.
        """
        box = self._live(mailbox_id)
        if more and box.used:
            raise RelayError(ErrorCode.ALREADY_USED,
                             "this linking code was already used by another approval")
        if not box.push(LinkData(id=0, body=body)):
            box.close()
            raise RelayError(ErrorCode.NOT_FOUND, "the new device is no longer connected")
        box.used = True
        if not more:
            box.close()

    # ------------------------------------------------------------ requests

    async def handle(self, frame: LinkFetch | LinkComplete, *, from_peer: bool) -> Frame:
        """Serve ``link_fetch`` / ``link_complete``: here, or forwarded to ``frame.node_id``.

        Args:
            frame: the request (its ``id`` is repeated in the answer).
            from_peer: the request came over a peer link (never forwarded again).

        Returns:
            ``link_info`` (fetch) or ``ok`` (complete).

        Raises:
            RelayError: ``not_found`` (unknown node or mailbox), ``unavailable``
                (the mailbox's node is unreachable), ``bad_request`` (a peer asked
                for a mailbox that is not on this node), or the mailbox node's error.
        """
        if frame.node_id == self._node_id:
            if isinstance(frame, LinkFetch):
                info, reply = self.fetch(frame.mailbox_id)
                return LinkInfo(id=frame.id, device_info=info, reply=reply)
            self.complete(frame.mailbox_id, frame.body, more=bool(frame.more))
            return Ok(id=frame.id)
        if from_peer:
            raise RelayError(ErrorCode.BAD_REQUEST, "that mailbox is not on this node")
        if self._ring.node(frame.node_id) is None:
            raise RelayError(ErrorCode.NOT_FOUND, "no such linking code: unknown node")
        expected: type[LinkInfo | Ok] = LinkInfo if isinstance(frame, LinkFetch) else Ok
        return await ask_peer(self._federation, frame.node_id, frame, expected,
                              self._peer_timeout, holder="node holding the mailbox")
