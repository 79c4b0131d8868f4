"""The :class:`Storage` protocol: everything a wa-relay node keeps on disk.

Contract for every backend (checked by :mod:`storage.testing`):

* All methods are async and Trio-friendly: a backend never blocks the event
  loop on disk I/O and never fsyncs on it (run blocking work in
  ``trio.to_thread``). Methods may be called concurrently from many tasks.
* A mutating call returns only after its effect is *durable* (survives a
  process kill -9 and a power loss as far as the backend's medium allows).
  Backends are encouraged to batch concurrent mutations into one durable
  transaction (group commit).
* Each call is atomic: it applies entirely or not at all. When a call raises
  :class:`~storage.errors.StorageFull`, :class:`~storage.errors.StorageUnavailable`
  or :class:`~storage.errors.QueueFull`, nothing of it was stored and everything
  committed before is intact. Batch calls (``*_many``, ``claim_keys``) are atomic
  per request and answer each request in list order. One exception: on a store too
  full to delete everything at once, a freeing call (``ack``, ``purge_device``,
  ``expire``) may be committed in pieces, each leaving a prefix of its deletions
  applied; it returns only once all pieces are durable.
* Freeing calls (acks, claims, purges, expiry, outbox deletes and retries) succeed
  on a full store: backends keep room for them.
* Keys are ``user_id: str`` (52 chars) and ``device_id: int``. Values are
  opaque ``bytes`` that the backend never interprets (they are ciphertext
  envelopes, signed device lists, public keys).
* Sequence numbers of one device queue start at 1 and strictly increase; they
  are never reused for that device, even after acks, purges or restarts.
* A call whose caller is cancelled may or may not be applied, never partly;
  if applied, it is applied before any mutating call made after it.
* After :meth:`Storage.aclose`, methods raise :class:`trio.ClosedResourceError`.
* Backends are opened by URL with :func:`storage.open_storage`; each backend
  class provides ``from_url(url) -> AbstractAsyncContextManager[Self]``
  (see ``docs/storage.md``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, TypeAlias, runtime_checkable

from .errors import StorageError


@dataclass(frozen=True, slots=True)
class QueueItem:
    """One queued envelope. ``ts`` is when it was enqueued, in seconds since the epoch."""

    seq: int
    ts: float
    envelope: bytes


@dataclass(frozen=True, slots=True)
class OutboxEntry:
    """A request the node accepted but could not hand to peer node ``dest`` yet.

    ``outbox_id`` increases in insertion order; ``attempts`` counts failed tries.
    """

    outbox_id: int
    dest: str
    payload: bytes
    attempts: int


@dataclass(frozen=True, slots=True)
class QueueQuota:
    """Byte bounds checked by :meth:`Storage.enqueue_many` before a request is written.

    Bytes are envelope lengths (``len(envelope)``), counted exactly: an enqueue adds
    them, and an ack, a purge or expiry takes them away again. ``None``: no bound.

    Attributes:
        device_bytes: most bytes one device queue may hold.
        account_bytes: most bytes all device queues of one user may hold together.
        charge_bytes: most bytes each of the request's ``charges`` tags may hold in
            all queues of the store together: one bound for every tag, or a tuple of
            bounds in ``charges`` order (``None`` entries: no bound for that tag).
        share_bytes: most bytes each of the request's ``charges`` tags may hold in
            one device queue (one bound, or a tuple as for ``charge_bytes``).
        share_exempt: users whose queues ``share_bytes`` does not bound (e.g. the
            sender's own account, accounts that wrote to the sender).
        share_floor: the lowest of ``share_bytes`` (``None``: no share bound), set
            at construction (a backend may keep share counts only for queues above it).
    """

    device_bytes: int | None = None
    account_bytes: int | None = None
    charge_bytes: int | tuple[int | None, ...] | None = None
    share_bytes: int | tuple[int | None, ...] | None = None
    share_exempt: frozenset[str] = frozenset()
    share_floor: int | None = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        shares = self.share_bytes
        floor = (shares if shares is None or isinstance(shares, int)
                 else min((b for b in shares if b is not None), default=None))
        object.__setattr__(self, "share_floor", floor)


@dataclass(frozen=True, slots=True)
class EnqueueRequest:
    """One message's copies for :meth:`Storage.enqueue_many` (the arguments of
    :meth:`Storage.enqueue` as a value): ``items`` are ``(user_id, device_id,
    envelope)``; ``dedupe``, ``max_queue`` and ``now`` as there. ``sender``, the
    ``(user_id, device_id)`` of the device that sent the message (``None``: no
    sending device, e.g. a bounce), orders the requests of one call: see
    :meth:`Storage.enqueue_many`.

    ``charges`` are tags (e.g. the sending user, the forwarding node) that every
    copy's bytes are counted against until it leaves its queue (see
    :meth:`Storage.charged_bytes`); ``quota`` bounds the bytes (:class:`QueueQuota`).
    """

    items: list[tuple[str, int, bytes]]
    dedupe: bytes | None = None
    max_queue: int | None = None
    now: float | None = None
    sender: tuple[str, int] | None = None
    charges: tuple[str, ...] = ()
    quota: QueueQuota | None = None


EnqueueResult: TypeAlias = list[int] | None | StorageError
"""What :meth:`Storage.enqueue_many` answers per request: the assigned seqs,
``None`` for a duplicate, or the :class:`~storage.errors.StorageError` instance
(``QueueFull``, ``StorageFull``, ``StorageUnavailable``) refusing that request alone."""


MEDIA_ID_SIZE = 32
"""Bytes of a media id: the SHA-256 of the blob's whole content."""
MEDIA_CHUNK_MAX = 256 * 1024
"""Most bytes one ``media_append`` chunk or one ``media_read`` may carry."""


@dataclass(frozen=True, slots=True)
class MediaInfo:
    """The state of one stored media blob (see the "media" section of :class:`Storage`).

    Attributes:
        media_id: 32 bytes, the SHA-256 of the whole blob.
        size: the declared total length in bytes.
        received: bytes stored so far, contiguous from offset 0.
        complete: every byte received and the SHA-256 verified; only complete
            blobs can be read.
        owner: the ``user_id`` whose upload created the blob.
        ts: seconds since the epoch of the last append (of completion, once complete);
            ``media_expire`` compares it.
    """

    media_id: bytes
    size: int
    received: int
    complete: bool
    owner: str
    ts: float


@dataclass(frozen=True, slots=True)
class UserRecord:
    """One piece of a user's home state, as :meth:`Storage.export_user` yields it and
    :meth:`Storage.import_user` takes it (the handoff of a reshape, docs/storage.md).

    ``kind`` and the fields it uses:

    * ``"list"``: the device list; ``seq`` = its version, ``value`` = the signed blob;
    * ``"watcher"``: ``key`` = a watcher user id, ``ts`` = when it was last refreshed
      (``0.0`` from a home that predates the time: the importer records its own now);
    * ``"seq"``: the device's seq counter (highest seq ever assigned): ``device_id``, ``seq``;
    * ``"fallback"``: ``device_id``, ``key`` = key id, ``value`` = key;
    * ``"otk"``: an unclaimed one-time key: ``device_id``, ``key``, ``value``;
    * ``"claimed"``: a claimed one-time key id (never accepted again): ``device_id``, ``key``;
    * ``"item"``: a queued envelope: ``device_id``, ``seq``, ``ts`` (seconds), ``value``;
    * ``"dedupe"``: the dedupe id (``value``, 1..255 bytes) of an enqueue that queued a
      copy for the user, with its ``ts``: a sender's retry of that request at the new
      home is answered as a duplicate (the id is kept there for the user). An id that
      only an import stored is a duplicate only for requests whose users are all
      linked to it; any other request with it is stored (and links its users), so a
      later part of the same message for other users is never lost.
    """

    kind: str
    device_id: int = 0
    key: str = ""
    seq: int = 0
    ts: float = 0.0
    value: bytes = b""


@dataclass(frozen=True, slots=True)
class WatchAdded:
    """What :meth:`Storage.add_watcher` did.

    Attributes:
        recorded: the pair is stored (new, or refreshed); false: refused because the
            watcher already watches ``max_watching`` users here.
        evicted: the watcher of the same user dropped to make room
            (``max_watchers``), or ``None``.
    """

    recorded: bool
    evicted: str | None = None


USER_RECORD_KINDS = frozenset({"list", "watcher", "seq", "fallback", "otk", "claimed", "item",
                               "dedupe"})


@runtime_checkable
class Storage(Protocol):
    """What a storage backend provides. See the module docstring for the contract."""

    # -- lifecycle

    async def aclose(self) -> None:
        """Flush pending writes and release resources. Idempotent."""

    # -- device lists (key directory)

    async def get_device_list(self, user_id: str) -> tuple[int, bytes] | None:
        """The stored ``(version, signed_blob)`` of ``user_id``, or ``None``."""

    async def put_device_list(self, user_id: str, version: int, blob: bytes) -> None:
        """Store a device list if ``version`` is greater than the stored one.

        Raises:
            StaleVersion: if a list with version >= ``version`` is stored.
            StorageFull: nothing stored.
        """

    # -- device-list watchers (who holds a copy of whose list)

    async def add_watcher(
        self, user_id: str, watcher_user_id: str, *, ts: float | None = None,
        max_watchers: int | None = None, max_watching: int | None = None,
    ) -> WatchAdded:
        """Durably record that ``watcher_user_id`` fetched ``user_id``'s device list at
        ``ts`` (seconds since the epoch; default now).

        The home node notifies every watcher's devices when ``user_id``'s list
        changes (docs/protocol.md, "Device-list changes"). A pair already stored is
        refreshed: its time becomes the later of the two (never earlier).

        Bounds (``None``: none), checked for a new pair only, in this order:

        * ``max_watching``: a watcher already recorded for that many users here is
          refused (nothing stored, ``recorded`` false);
        * ``max_watchers``: when ``user_id`` already has that many watchers, the
          least recently refreshed one (lowest time, then lowest id) is dropped in
          the same transaction (``evicted``).

        Raises:
            StorageFull: nothing stored.
        """

    async def watchers(self, user_id: str) -> list[str]:
        """The user ids recorded by :meth:`add_watcher` for ``user_id``, each once,
        in ascending order (``[]`` if none)."""

    async def watching_count(self, user_id: str) -> int:
        """How many users ``user_id`` is recorded as a watcher of here (the count
        :meth:`add_watcher` bounds with ``max_watching``)."""

    async def expire_watchers(self, older_than: float) -> int:
        """Drop every watcher pair last refreshed before ``older_than`` (seconds since
        the epoch); return how many.

        Raises:
            StorageFull, StorageUnavailable: nothing dropped (retry later).
        """

    # -- one-time keys and fallback keys

    async def add_one_time_keys(
        self, user_id: str, device_id: int, keys: list[tuple[str, bytes]]
    ) -> int:
        """Add ``(key_id, public_key)`` pairs for a device; return how many it now holds.

        Raises:
            DuplicateKey: a key id is repeated in ``keys`` or already stored
                (also if it was already claimed); nothing stored.
            StorageFull: nothing stored.
        """

    async def set_fallback_key(self, user_id: str, device_id: int, key_id: str, key: bytes) -> None:
        """Replace the device's fallback key (handed out when no one-time key is left)."""

    async def get_fallback_key(self, user_id: str, device_id: int) -> tuple[str, bytes] | None:
        """The device's fallback key ``(key_id, key)`` without claiming anything; ``None``
        if it has none (a read: the node serves it to claimers over their budget)."""

    async def claim_key(self, user_id: str, device_id: int) -> tuple[str, bytes, bool] | None:
        """Atomically take one key for the device: ``(key_id, key, is_fallback)``.

        A one-time key is returned to at most one caller, ever, even under
        concurrent claims; it is deleted in the same transaction. When none is
        left, the fallback key is returned (not deleted). ``None`` if neither exists.
        """

    async def claim_keys(
        self, claims: list[tuple[str, int]]
    ) -> list[tuple[str, bytes, bool] | None]:
        """:meth:`claim_key` for many ``(user_id, device_id)`` in one transaction,
        answered in order (a device listed twice gets two different one-time keys)."""

    async def count_one_time_keys(self, user_id: str, device_id: int) -> int:
        """How many unclaimed one-time keys the device has."""

    # -- per-device queues

    async def enqueue(
        self, items: list[tuple[str, int, bytes]], *, dedupe: bytes | None = None,
        max_queue: int | None = None, now: float | None = None,
    ) -> list[int] | None:
        """Append envelopes ``(user_id, device_id, envelope)`` to device queues, atomically.

        Args:
            items: the copies; several may target the same device.
            dedupe: if given, an id (e.g. ``msg_id + user_id``). If the same
                ``dedupe`` id was enqueued before (and not yet expired), nothing is
                stored and ``None`` is returned: a retried request is idempotent.
                The id is linked to every user with a copy in ``items``, so that it
                moves with the user's home (:meth:`export_user`).
            max_queue: if given, the most envelopes one device queue may hold.
            now: the enqueue time in seconds (default: ``time.time()``).

        Returns:
            The assigned sequence numbers, in ``items`` order, or ``None`` for a duplicate.

        Raises:
            QueueFull: some device queue would exceed ``max_queue``; nothing stored.
            StorageFull: nothing stored.
        """

    async def enqueue_many(self, requests: list[EnqueueRequest]) -> list[EnqueueResult]:
        """Apply many :meth:`enqueue` requests in one group commit, each atomic on its own.

        Requests are applied **in list order** (sequence numbers of one device
        grow along the list), and each gets its own answer: one request's
        refusal (``QueueFull``, ``StorageFull`` for an envelope too big for the
        store, ...) never fails the others, with one exception that keeps order:

        **A refused sender's later requests to the same devices are skipped.**
        Once a request with a ``sender`` is refused, every *later* request of the
        same call with the same ``sender`` and an item for any device the refused
        request had an item for is refused too, with the same error class and
        nothing written (checked before its dedupe id; a skipped request counts as
        refused for the requests after it). So a resent refused message can never
        land after a later message of the same sending device in a device queue
        (docs/protocol.md, "Order"). Requests without a ``sender``, of other
        senders, or for other devices are not affected.

        A request's ``quota`` is checked against the state left by the requests
        before it (a duplicate is answered ``None`` before any bound is checked);
        over any bound, the request gets ``QueueFull`` naming it (``quota``, ``tag``)
        and nothing of it is written.

        Returns:
            One entry per request, in order: its seqs, ``None`` (duplicate), or
            the ``StorageError`` instance that refused it (not raised):
            ``QueueFull``, ``StorageFull``, ``StorageUnavailable``.

        Raises:
            ValueError, TypeError: a malformed argument in any request; nothing stored.
        """

    async def read_queue(
        self, user_id: str, device_id: int, after_seq: int = 0, limit: int = 256
    ) -> list[QueueItem]:
        """Up to ``limit`` queued items of the device with ``seq > after_seq``, in seq order."""

    async def queue_length(self, user_id: str, device_id: int) -> int:
        """How many envelopes the device's queue holds."""

    async def queue_bytes(self, user_id: str, device_id: int | None = None) -> int:
        """Envelope bytes queued for one device, or for all of the user's devices
        (``device_id`` ``None``). Exact: enqueues add, acks, purges and expiry subtract."""

    async def charged_bytes(
        self, tag: str, user_id: str | None = None, device_id: int | None = None
    ) -> int:
        """Envelope bytes still queued that were enqueued with charge ``tag``: in all
        queues, or in one device's queue (``user_id`` and ``device_id`` given)."""

    async def ack(self, user_id: str, device_id: int, up_to_seq: int) -> int:
        """Delete every queued item of the device with ``seq <= up_to_seq``; return how many."""

    async def ack_many(self, acks: list[tuple[str, int, int]]) -> list[int]:
        """Cumulative acks ``(user_id, device_id, up_to_seq)`` in one group commit,
        applied in list order; return how many items each deleted. Freeing: succeeds
        on a full store. An ack never deletes an item with ``seq > up_to_seq``.

        Raises:
            StorageUnavailable: the medium failed (acks before the failing one may
                have been applied; acks are idempotent, so retry them all).
        """

    async def purge_device(self, user_id: str, device_id: int) -> int:
        """Delete the device's whole queue and its keys; return how many envelopes went.

        "Its keys" are its one-time keys, the record of its claimed key ids and
        its fallback key; its seq counter is kept (seqs are never reused).
        """

    async def expire(self, older_than: float) -> int:
        """Delete queued items and dedupe ids enqueued before ``older_than``
        (seconds since the epoch); return how many queued items went."""

    # -- correspondents ("this user wrote to that one", kept at the user's home)

    async def add_correspondents(self, user_id: str, others: list[str]) -> None:
        """Durably record that ``user_id`` sent to each of ``others`` (idempotent).

        Raises:
            StorageFull: nothing stored.
        """

    async def is_correspondent(self, user_id: str, other: str) -> bool:
        """Whether :meth:`add_correspondents` recorded ``other`` for ``user_id``."""

    # -- invites (single-use registration tokens)

    async def invite_add(self, token_hash: bytes, expires_at: float) -> None:
        """Store an invite, by the hash of its token, valid until ``expires_at``
        (seconds since the epoch). Raises StorageFull (nothing stored)."""

    async def invite_use(self, token_hash: bytes, now: float | None = None) -> bool:
        """Atomically consume an unexpired invite: ``True`` for exactly one caller,
        ever; ``False`` if it is unknown, used or expired (expired ones are deleted)."""

    # -- outbox (durable federation retries)

    async def outbox_put(self, dest: str, payload: bytes) -> int:
        """Durably store a request for peer node ``dest``; return its ``outbox_id``."""

    async def outbox_put_many(self, entries: list[tuple[str, bytes]]) -> list[int]:
        """:meth:`outbox_put` for many ``(dest, payload)`` in one durable transaction,
        atomically; return their ``outbox_id`` s in order (increasing).

        Raises:
            StorageFull, StorageUnavailable: nothing stored.
        """

    async def outbox_list(self, dest: str | None = None, limit: int = 256) -> list[OutboxEntry]:
        """Pending entries, oldest first, optionally only those for ``dest``."""

    async def outbox_retry(self, outbox_id: int) -> None:
        """Record one more failed attempt for the entry (no-op if it is gone)."""

    async def outbox_delete(self, outbox_id: int) -> None:
        """Remove a delivered (or finally bounced) entry. No-op if it is gone."""

    async def outbox_delete_many(self, outbox_ids: list[int]) -> None:
        """:meth:`outbox_delete` for many ids in one durable transaction (ids that are
        gone are skipped). Freeing: succeeds on a full store."""

    # -- media: encrypted blobs addressed by SHA-256, uploaded in chunks (docs/media.md)
    #
    # A blob is appended in order, chunk after chunk (each at most MEDIA_CHUNK_MAX
    # bytes), by the user who started it; the append that reaches ``size`` checks the
    # SHA-256 of the whole blob against ``media_id`` and marks it complete. Backends
    # never hold a whole blob in memory (stream it) and never block the loop on it.
    # Each append is atomic and durable like every mutating call. Blobs are opaque
    # ciphertext to the backend.

    async def media_append(
        self, media_id: bytes, size: int, offset: int, chunk: bytes, *, owner: str,
        max_total: int | None = None, now: float | None = None,
    ) -> MediaInfo:
        """Store ``chunk`` at ``offset`` of blob ``media_id`` (created by the first append).

        Args:
            media_id: 32 bytes, the SHA-256 the finished blob must have.
            size: the blob's total length (>= 0); every append repeats it.
            offset: must equal the bytes received so far (0 for a new blob).
            chunk: 1..MEDIA_CHUNK_MAX bytes (empty only for a blob of size 0),
                ending at most at ``size``.
            owner: the uploading ``user_id``; appends by another user to an
                unfinished blob are refused.
            max_total: if given, the most bytes all blobs together may hold (see
                :meth:`media_usage`): an append that would go above it is refused,
                and so is the first chunk of a blob whose ``size`` alone would not
                fit. Unfinished uploads reserve nothing beyond what they stored, so
                declaring a huge size cannot lock others out.
            now: the time of the append in seconds (default ``time.time()``).

        Returns:
            The blob's state after the append. Appending to a *complete* blob of
            the same ``size`` stores nothing and returns its state (whoever asks,
            whatever the offset): the content is fixed by its hash.

        Raises:
            MediaConflict: ``offset`` is not the bytes received so far, the blob has
                another ``size``, or it is another owner's unfinished blob; nothing stored.
            MediaCorrupt: this append completed the blob but its SHA-256 is not
                ``media_id``; the whole blob was deleted.
            StorageFull: ``max_total`` would be exceeded, or the disk is full;
                nothing stored.
            ValueError: malformed arguments (id length, negative numbers, a chunk
                that is empty, longer than MEDIA_CHUNK_MAX or ends past ``size``).
        """

    async def media_status(self, media_id: bytes) -> MediaInfo | None:
        """The state of blob ``media_id``, or ``None`` if there is none."""

    async def media_read(self, media_id: bytes, offset: int, length: int) -> bytes | None:
        """Up to ``length`` bytes of a *complete* blob from ``offset`` (fewer at the end,
        ``b""`` at ``offset == size``), or ``None`` if no complete blob ``media_id`` exists.

        Raises:
            ValueError: ``offset`` outside ``0..size`` or ``length`` outside
                ``0..MEDIA_CHUNK_MAX``.
        """

    async def media_usage(self) -> int:
        """Bytes all stored blobs hold together (each at its bytes ``received``)."""

    async def media_owner_usage(self, owner: str) -> int:
        """Bytes the blobs created by ``owner`` hold together (each at its bytes
        ``received``). May cost a scan of the blob records: callers cache it."""

    async def media_expire(
        self, older_than: float, *, incomplete_older_than: float | None = None
    ) -> int:
        """Delete every blob whose ``ts`` is before ``older_than``, and every unfinished
        blob whose ``ts`` is before ``incomplete_older_than`` (if given; a stalled
        upload usually gets a shorter life); times in seconds since the epoch.
        Return how many blobs went."""

    # -- handoff: moving a user's home to another node in batches (docs/storage.md)

    async def list_users(self, after: str = "", limit: int = 256) -> list[str]:
        """Up to ``limit`` user ids, ascending and greater than ``after``, that have a
        device list, queued envelopes or unclaimed one-time keys here (the users a
        reshape may have to move)."""

    async def export_user(self, user_id: str, *, start: int = 0, limit: int = 256) -> list[UserRecord]:
        """Up to ``limit`` records of ``user_id``'s state from position ``start`` of a
        fixed order: the device list, watchers, then per device (ascending) its seq
        counter, fallback key, one-time keys, claimed key ids and queued envelopes (in
        seq order), then the unexpired dedupe ids of enqueues that had a copy for the
        user (ascending; acknowledged copies too). Page with ``start += len(batch)`` until a batch is shorter than
        ``limit``; the order is stable while nothing of the user is written.
        ``[]`` for an unknown user."""

    async def import_user(
        self, user_id: str, records: list[UserRecord], *, reset: bool = False
    ) -> None:
        """Durably write ``records`` (from :meth:`export_user` of another store) for
        ``user_id``, atomically. Idempotent: importing a batch twice stores it once.
        With ``reset``, the user's existing state here (as :meth:`delete_user`) is
        removed first, in the same transaction. Seq counters become the larger of
        the stored and the imported one; an envelope keeps its seq and ``ts``; a
        dedupe id is stored (with its ``ts``, unless already stored) and linked to
        ``user_id``.

        Raises:
            ValueError: an unknown ``kind`` or malformed record; nothing stored.
            StorageFull, StorageUnavailable: nothing stored.
        """

    async def delete_user(self, user_id: str) -> int:
        """Delete ``user_id``'s device list, watchers, keys and queued envelopes
        (seq counters are kept: seqs are never reused) and its links to dedupe ids
        (an id no other user here is linked to goes too); return how many envelopes
        went. Freeing: succeeds on a full store."""

    async def media_owned(self, owner: str, after: bytes = b"", limit: int = 256) -> list[bytes]:
        """Up to ``limit`` ids of *complete* blobs uploaded by ``owner``, ascending,
        greater than ``after`` (a user's media moves with its home)."""

    async def media_delete(self, media_id: bytes) -> bool:
        """Delete one blob (complete or not); ``False`` if there was none. Freeing."""

    async def get_mark(self, name: str) -> bytes | None:
        """The value of a small durable named marker (handoff progress), or ``None``."""

    async def set_mark(self, name: str, value: bytes | None) -> None:
        """Durably set (or, with ``None``, delete) the marker ``name`` (at most 200
        UTF-8 bytes; the value at most 4 KiB)."""

    async def marks(self, prefix: str) -> dict[str, bytes]:
        """Every marker whose name starts with ``prefix``."""

