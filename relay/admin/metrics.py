"""Prometheus metrics of one node (``/metrics`` on the admin listener, :mod:`relay.admin`).

Every node owns one :class:`NodeMetrics`, whose :class:`prometheus_client.CollectorRegistry`
holds only that node's metrics (no global registry, so several nodes of one
process, ``wa-relay cluster`` or tests, never mix). Three kinds of sources:

* **counters moved where things happen**: connections accepted and refused and
  WebSocket frames in and out (:mod:`relay.serving.listener`), envelopes stored, acked,
  purged and expired and outbox entries added (:class:`relay.admin.metered.MeteredStorage`),
  group-commit batches (an observer on the LMDB writer); refusals by error code,
  forwards by peer and result, and finished outbox entries through
  :meth:`NodeMetrics.refusal`, :meth:`~NodeMetrics.forwards_done` and
  :meth:`~NodeMetrics.outbox_finished`, called by the message path (server,
  router, outbox);
* **gauges read at scrape time** by :meth:`NodeMetrics.refresh`: connections by
  kind, peer links up, queued envelopes, outbox depth per peer (bounded by
  :data:`OUTBOX_COUNT_LIMIT`), storage size and free disk space;
* constant ``wa_relay_info{version, node, ring}``.

Metric names and meanings: docs/operations.md, "Metrics".
"""

from __future__ import annotations

from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from relay.services.outbox import DEAD_LETTER
from storage import StorageError

if TYPE_CHECKING:
    from relay.node import Node

OUTBOX_COUNT_LIMIT = 100_000
"""Most outbox entries counted per peer at one scrape (the gauge saturates there)."""
BATCH_OPS_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048)
COMMIT_SECONDS_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                          2.5)


def relay_version() -> str:
    """The installed ``wa-relay`` version (``"unknown"`` when not installed)."""
    try:
        return version("wa-relay")
    except PackageNotFoundError:  # pragma: no cover - running from a bare checkout
        return "unknown"


class _BeforeCollect:
    """A collector of no metric that calls ``fn()`` whenever the registry is collected."""

    def __init__(self, fn: Callable[[], None]) -> None:
        self._fn = fn

    def collect(self) -> list:
        self._fn()
        return []

    def describe(self) -> list:
        return []


class NodeMetrics:
    """The metrics of one node and their registry.

    Args:
        node_id: the node's id. ring_version: its ring version (hex).

    Attributes:
        registry: the node's own :class:`~prometheus_client.CollectorRegistry`.
        (metric attributes: see :meth:`__init__`'s body and docs/operations.md.)
    """

    def __init__(self, node_id: str, ring_version: str) -> None:
        self.registry = r = CollectorRegistry(auto_describe=True)
        # Frames and bytes in and out are counted in plain ints on the message path
        # (a prometheus_client inc takes a lock: ~1.4 us, several per message) and
        # added to their counters when the registry is collected: registered first,
        # so every scrape sees them.
        self._io = [0, 0, 0, 0]  # frames in, bytes in, frames out, bytes out
        # The same for envelope copies stored, their bytes and duplicates (per request).
        self._stores = [0, 0, 0]
        r.register(_BeforeCollect(self._flush_io))
        info = Gauge("wa_relay_info", "Constant 1, labelled with the node's version, id and ring.",
                     ["version", "node", "ring"], registry=r)
        info.labels(relay_version(), node_id, ring_version[:12]).set(1)
        self.accepted = Counter("wa_relay_connections_accepted",
                                "WebSocket connections accepted (all kinds).", registry=r)
        self.refused = Counter("wa_relay_connections_refused",
                               "Connections refused with HTTP 503 (over a connection cap).",
                               registry=r)
        self.connections = Gauge("wa_relay_connections",
                                 "Open connections by kind: pending (not authenticated yet, "
                                 "linking devices included), device, peer.", ["kind"], registry=r)
        self.frames_in = Counter("wa_relay_frames_received", "WebSocket messages received.",
                                 registry=r)
        self.frames_out = Counter("wa_relay_frames_sent", "WebSocket messages sent.", registry=r)
        self.bytes_in = Counter("wa_relay_frame_bytes_received",
                                "Bytes of WebSocket messages received.", registry=r)
        self.bytes_out = Counter("wa_relay_frame_bytes_sent", "Bytes of WebSocket messages sent.",
                                 registry=r)
        self.stored = Counter("wa_relay_envelopes_stored",
                              "Envelope copies written to device queues of this node.", registry=r)
        self.stored_bytes = Counter("wa_relay_envelope_bytes_stored",
                                    "Bytes of envelope copies written to device queues.",
                                    registry=r)
        self.duplicates = Counter("wa_relay_envelopes_duplicate",
                                  "Enqueue requests dropped as duplicates (retries).", registry=r)
        self.acked = Counter("wa_relay_envelopes_acked",
                             "Queued envelopes deleted by device acknowledgements.", registry=r)
        self.dropped = Counter("wa_relay_envelopes_removed",
                               "Queued envelopes deleted otherwise, by reason.", ["reason"],
                               registry=r)
        self.watchers_dropped = Counter(
            "wa_relay_watchers_dropped",
            "Device-list watcher records dropped or not recorded, by reason: evicted (the "
            "user's least recently refreshed, for a new one over watchers_per_user), refused "
            "(the account watches watching_per_account users here), expired (watcher_ttl).",
            ["reason"], registry=r)
        self.outbox_added = Counter("wa_relay_outbox_added",
                                    "Requests written to the outbox (a peer was unreachable).",
                                    registry=r)
        self.storage_refusals = Counter("wa_relay_storage_refusals",
                                        "Enqueues refused by the storage, by error.", ["error"],
                                        registry=r)
        self.refusals = Counter("wa_relay_refusals",
                                "Requests answered with an error code, by code.", ["code"],
                                registry=r)
        self.forwards = Counter("wa_relay_forwards",
                                "Forwards to peers by result: stored (answered), queued (to the "
                                "outbox), or the refusal's error code.", ["peer", "result"], registry=r)
        self.outbox_done = Counter("wa_relay_outbox_done",
                                   "Outbox entries finished, by how: delivered, bounced, "
                                   "dead_letter, dropped.", ["how"], registry=r)
        self.batch_ops = Histogram("wa_relay_commit_batch_ops",
                                   "Operations per group-commit transaction.",
                                   buckets=BATCH_OPS_BUCKETS, registry=r)
        self.batch_seconds = Histogram("wa_relay_commit_seconds",
                                       "Duration of one group-commit batch (commit and fsync).",
                                       buckets=COMMIT_SECONDS_BUCKETS, registry=r)
        self.queued = Gauge("wa_relay_queued_envelopes",
                            "Envelopes in all device queues of this node.", registry=r)
        self.queued_bytes = Gauge("wa_relay_queued_bytes",
                                  "Envelope bytes in all device queues of this node.", registry=r)
        self.users = Gauge("wa_relay_users",
                           "Accounts whose device list this node holds (homed here).",
                           registry=r)
        self.outbox = Gauge("wa_relay_outbox_entries",
                            f"Outbox entries per peer (counted up to {OUTBOX_COUNT_LIMIT}).",
                            ["peer"], registry=r)
        self.dead_letters = Gauge(
            "wa_relay_outbox_dead_letters",
            f"Outbox entries kept aside because they can never be sent (counted up to "
            f"{OUTBOX_COUNT_LIMIT}; docs/protocol.md, 'Size budget').", registry=r)
        self.links_up = Gauge("wa_relay_peer_link_up",
                              "1 while this node's link to the peer is up.", ["peer"], registry=r)
        self.storage_bytes = Gauge("wa_relay_storage_bytes",
                                   "Storage sizes: file (data.mdb on disk), used (pages in "
                                   "use), map (the most it may take), disk_free.", ["kind"],
                                   registry=r)
        self.storage_ok = Gauge("wa_relay_storage_ok",
                                "1 if the last scrape could read the storage.", registry=r)
        self.handoff_remaining = Gauge(
            "wa_relay_handoff_users_remaining",
            "Users this node still has to hand to their new homes (a reshape).", registry=r)
        self.handoff_users = Gauge(
            "wa_relay_handoff_users", "Users handed over by (out) or to (in) this node since "
            "it started.", ["direction"], registry=r)
        for direction in ("out", "in"):
            self.handoff_users.labels(direction).set(0)
        self.handoff_done = Gauge(
            "wa_relay_handoff_done", "1 when no reshape is unfinished at this node.", registry=r)
        self.handoff_stuck = Gauge(
            "wa_relay_handoff_users_stuck", "Users whose handoff the new home (peer) refused "
            "for good: not retried, served here until fixed (docs/operations.md).", ["peer"],
            registry=r)

    # -- hooks

    def read(self, message: bytes | str) -> None:
        """One WebSocket message was read from a connection."""
        io = self._io
        io[0] += 1
        io[1] += len(message)

    def written(self, batch: list[bytes]) -> None:
        """``batch`` of WebSocket messages was written to a connection."""
        io = self._io
        io[2] += len(batch)
        io[3] += sum(map(len, batch))

    def stored_now(self, copies: int, nbytes: int) -> None:
        """``copies`` envelope copies of ``nbytes`` bytes were stored by one request."""
        stores = self._stores
        stores[0] += copies
        stores[1] += nbytes

    def duplicate_now(self) -> None:
        """One enqueue request was dropped as a duplicate."""
        self._stores[2] += 1

    def _flush_io(self) -> None:
        """Add the frames, bytes and stores counted since the last collection to their
        counters."""
        io, self._io = self._io, [0, 0, 0, 0]
        stores, self._stores = self._stores, [0, 0, 0]
        for counter, n in zip((self.frames_in, self.bytes_in, self.frames_out, self.bytes_out,
                               self.stored, self.stored_bytes, self.duplicates),
                              io + stores, strict=True):
            if n:
                counter.inc(n)

    def refusal(self, code: str) -> None:
        """Count one request answered with error ``code`` (e.g. ``"queue_full"``)."""
        self.refusals.labels(code).inc()

    def forwards_done(self, peer: str, outcomes: list) -> None:
        """Count forwarded parts to ``peer`` by result: ``"stored"``, ``"queued"``, or the
        refusal's error code (a :class:`relay.errors.RelayError` outcome); called by
        :class:`relay.services.forwarding.Forwarding`."""
        for outcome in outcomes:
            result = outcome if isinstance(outcome, str) else getattr(
                getattr(outcome, "code", None), "value", "refused")
            self.forwards.labels(peer, result).inc()

    def outbox_finished(self, how: str, n: int = 1) -> None:
        """Count ``n`` outbox entries gone ``how`` (``"delivered"``, ``"bounced"``,
        ``"dead_letter"``, ``"dropped"``); called by the outbox."""
        if n:
            self.outbox_done.labels(how).inc(n)

    def observe_batch(self, ops: int, seconds: float) -> None:
        """Group-commit observer: one batch of ``ops`` ops took ``seconds``."""
        self.batch_ops.observe(ops)
        self.batch_seconds.observe(seconds)

    # -- scrape

    async def refresh(self, node: Node) -> bool:
        """Read the gauges from ``node`` (connections, links, storage); return whether
        the storage answered. Never raises for a failing storage (``wa_relay_storage_ok`` 0)."""
        adm = node.admission
        devices = node.registry.connected
        pending = adm.pending_total
        self.connections.labels("pending").set(pending)
        self.connections.labels("device").set(devices)
        self.connections.labels("peer").set(max(0, adm.total - pending - devices))
        for peer, link in node.federation.links.items():
            self.links_up.labels(peer).set(1 if link.is_up else 0)
        handoff = node.handoff
        self.handoff_remaining.set(handoff.remaining)
        self.handoff_users.labels("out").set(handoff.stats.users)
        self.handoff_users.labels("in").set(handoff.stats.users_in)
        self.handoff_done.set(1 if handoff.done else 0)
        stuck = handoff.refusals.stuck_by_peer()
        for peer in sorted(node.federation.links):
            self.handoff_stuck.labels(peer).set(stuck.get(peer, 0))
        try:
            await self._refresh_storage(node)
        except (StorageError, OSError):
            self.storage_ok.set(0)
            return False
        self.storage_ok.set(1)
        return True

    async def _refresh_storage(self, node: Node) -> None:
        storage = node.storage
        peers = sorted(node.federation.links)
        stats = getattr(storage, "stats", None)
        if stats is not None:
            numbers = stats()
            self.queued.set(numbers["queued"])
            self.queued_bytes.set(numbers.get("queued_bytes", 0))
            self.users.set(numbers.get("users", 0))
            for kind, key in (("file", "file_bytes"), ("used", "used_bytes"),
                              ("map", "map_bytes"), ("disk_free", "disk_free_bytes")):
                self.storage_bytes.labels(kind).set(numbers[key])
        counts = getattr(storage, "outbox_counts", None)
        dests = [*peers, DEAD_LETTER]
        if counts is not None:
            depth = counts(dests, OUTBOX_COUNT_LIMIT)
        else:  # a backend without the capability: list (bounded lower, payloads are read)
            depth = {p: len(await storage.outbox_list(p, limit=1000)) for p in dests}
        for peer in peers:
            self.outbox.labels(peer).set(depth[peer])
        self.dead_letters.set(depth[DEAD_LETTER])

    def render(self) -> bytes:
        """The registry in the Prometheus text format."""
        return generate_latest(self.registry)
