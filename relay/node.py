"""One relay node: storage, ring, directory, delivery, federation, outbox, server.

``serve_node(config)`` runs until cancelled, or until its ``stop`` event is set
(then it stops gracefully, :meth:`Node.shut_down`), and supports ``nursery.start``::

    async with trio.open_nursery() as nursery:
        port = await nursery.start(partial(serve_node, config, stop=stop))  # listening now
        ...
        stop.set()        # graceful: every WebSocket closed with 1001, storage flushed
        # or: nursery.cancel_scope.cancel()   (abrupt)

With ``config.admin_port`` set, the node also serves its admin HTTP listener
(``/metrics``, ``/health``, ``/ready``; :mod:`relay.admin`).

Logs go to the ``wa_relay.node.<id>`` logger: metadata only (user id prefixes,
device ids, codes), never message bodies or keys. Where they end up (stderr,
``config.log_file``, format, level) is set once per process by
:func:`relay.admin.logs.configure_logging` (the CLI does it); this module adds no handler.
"""

from __future__ import annotations

import logging
import resource
import time
from collections.abc import Callable
from contextlib import AsyncExitStack
from functools import partial

import trio
import trio_websocket

from relay.admin import serve_admin
from relay.admin.metered import CountingRegistry, MeteredStorage
from relay.admin.metrics import NodeMetrics
from relay.config import NodeConfig
from relay.config.ring import Ring
from relay.net.admission import Admission
from relay.net.tls import certificate_binding, server_tls_context
from relay.net.wsserver import serve_gated_websocket
from relay.protocol import Limits
from relay.protocol.cluster import is_loopback, verify_cluster
from relay.services.claim_limits import ClaimLimits
from relay.services.directory import Directory
from relay.services.federation import Federation, peer_link_settings
from relay.services.forwarding import Forwarding
from relay.services.full_log import StorageFullLog
from relay.services.handoff import Handoff
from relay.services.homes import Homes
from relay.services.limits import QueuePolicy, RateLimits
from relay.services.linking import Linking
from relay.services.media import MediaService
from relay.services.notices import DeviceListChanges
from relay.services.outbox import Outbox
from relay.services.registration import Registration
from relay.services.router import Router
from relay.services.siblings import Siblings, watch_of
from relay.services.table import node_table
from relay.serving.listener import SocketSet, handle_websocket
from storage import Storage, StorageError, open_storage

FORWARD_TIMEOUT = 5.0  # seconds before a forward is given to the outbox

EXPIRE_INTERVAL = 300.0  # seconds between TTL sweeps
FRAME_SLACK = 64 * 1024  # bytes above max_frame that still get a too_large answer
RECEIVE_BUFFER = 64 * 1024
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"  # also relay.admin.logs
CLOSE_GOING_AWAY = 1001
FD_HEADROOM = 64  # descriptors a node needs beyond its connections (storage, logs, links)


def _already_notified(user_id: str, device_id: int) -> None:
    """The router's wake-up when the storage wakes pushers itself (LMDB)."""


class Node:
    """The wired components of one running node (built by :func:`serve_node`).

    Attributes:
        id: node id. ring: the cluster ring. limits: frame limits.
        storage, directory, registry, federation, outbox, router, forwarding: components
            (``forwarding``: the per-destination ``forward_batch`` lanes).
        handlers: the per-service handler table (:func:`relay.services.table.node_table`).
        linking: the linking mailboxes. changes: device-list changes (watchers, notices).
        siblings: what the node's other processes commit (a shared storage only).
        media: media uploads and downloads. admission: connection counts and caps.
        rates: the token buckets; queue_policy: byte quotas and correspondents
            (:mod:`relay.services.limits`); registration: the registration policy.
        signing_key: the node's Ed25519 key. log: the node's logger.
        binding: the channel binding of connections to this node (SHA-256 of its TLS
            certificate; ``b""`` on plain loopback ``ws://``): its challenges, and the
            ``auth``/``peer_auth`` it accepts, are signed over it.
        cluster_doc: the signed cluster description it serves (``get_cluster``), or None.
        full_log: rate-limited warnings about ``storage_full`` refusals.
        metrics: the node's :class:`~relay.admin.metrics.NodeMetrics` (its own registry).
        sockets: the accepted WebSockets being served (:mod:`relay.serving.listener` keeps it).
        ready: set once the node listens. stopping: set when it starts to stop.
        started_at: ``trio.current_time()`` when the node was built.

    ``storage`` is wrapped in a :class:`~relay.admin.metered.MeteredStorage`; a storage
    that offers ``observe_batches`` (LMDB) reports its group-commit batches.
    """

    def __init__(
        self, config: NodeConfig, storage: Storage, log: logging.Logger, *,
        forward_timeout: float = FORWARD_TIMEOUT,
    ) -> None:
        self.config = config
        self.id = config.id
        self.signing_key = config.signing_key
        self.binding = certificate_binding(config.tls_cert) if config.tls_cert else b""
        self.cluster_doc = config.cluster_doc
        self.cluster_version = (None if config.cluster_doc is None
                                else verify_cluster(config.cluster_doc).version)
        self.log = log
        self.full_log = StorageFullLog(log)
        self.ring = Ring(config.cluster)
        self.homes = Homes(config.id, self.ring,
                           Ring(config.previous_cluster) if config.previous_cluster else None)
        self.limits = Limits.for_node(config.max_frame, config.max_envelope)
        self.admission = Admission(config.max_connections, config.max_pending_per_ip,
                                   min(config.max_pending, config.max_connections),
                                   max_per_ip=config.max_connections_per_ip)
        #: Connections not yet upgraded to a WebSocket (idle sockets hold descriptors).
        self.opening = Admission(config.max_pending, config.max_pending_per_ip,
                                 config.max_pending)
        self.metrics = NodeMetrics(config.id, self.ring.version)
        observe = getattr(storage, "observe_batches", None)
        if observe is not None:
            observe(self.metrics.observe_batch)
        storage = MeteredStorage(storage, self.metrics)  # type: ignore[assignment]
        self.storage = storage
        self.sockets = SocketSet()
        self.ready = trio.Event()
        self.stopping = trio.Event()
        self.started_at = trio.current_time()
        self.directory = Directory(storage, self.homes, config.id,
                                   max_devices=config.abuse.max_devices,
                                   claim_limits=ClaimLimits(config.otk_claim_burst))
        self.registry = CountingRegistry()
        # A storage that wakes pushers from its commit's hand-back (LMDB) makes the
        # router's own wake-up after enqueue_many redundant (it would cost the pusher
        # an empty read when it already ran).
        # A storage that hands what it stored to the registry (LMDB) lets an idle,
        # caught-up pusher write it from the hand-back (no wake-up, no read).
        delivers = getattr(storage, "deliver_enqueued", None)
        reports = getattr(storage, "notify_enqueued", None)
        notify_stored = (_already_notified
                         if (delivers is not None and delivers(self.registry.stored))
                         or (reports is not None and reports(self.registry.notify))
                         else self.registry.notify)
        self.federation = Federation(config.id, config.signing_key, self.homes,  # type: ignore[arg-type]
                                     self.limits, log,
                                     peer_link_settings(config.keepalive_interval,
                                                        config.keepalive_timeout))
        self.outbox = Outbox(storage, self.federation, self.registry.notify,
                             queue_ttl=config.queue_ttl, timeout=forward_timeout,
                             limits=self.limits, log=log,
                             sender_cap=config.abuse.outbox_sender_bytes,
                             total_cap=config.abuse.outbox_total_bytes,
                             retry_after_ms=int(config.abuse.quota_retry_after * 1000))
        self.changes = DeviceListChanges(
            config.id, self.homes, storage,  # type: ignore[arg-type]
            self.directory, self.registry, self.federation,
            self.outbox, max_queue=config.max_queue, timeout=forward_timeout, log=log,
            abuse=config.abuse, shared=watch_of(storage) is not None,
        )
        self.rates = RateLimits(config.abuse)
        self.queue_policy = QueuePolicy(config.abuse, storage)
        self.changes.policy = self.queue_policy
        self.registration = Registration(config.abuse.registration, storage, self.rates)
        self.router = Router(config.id, self.homes, storage, self.directory, notify_stored,
                             max_queue=config.max_queue, on_stale=self.changes.watch,
                             policy=self.queue_policy, rates=self.rates)
        self.forwarding = Forwarding(self.federation, self.outbox, limits=self.limits,
                                     timeout=forward_timeout, log=log)
        self.router.attach(self.forwarding)
        self.forwarding.on_outcomes = self.metrics.forwards_done
        self.outbox.on_finished = self.metrics.outbox_finished
        self.linking = Linking(config.id, self.ring, self.federation, ttl=config.link_ttl,
                               max_open=config.max_mailboxes,
                               max_per_owner=config.max_mailboxes_per_ip)
        self.media = MediaService(config.id, self.ring, storage, self.federation, log,
                                  quota=config.media_quota, ttl=config.media_ttl,
                                  upload_ttl=config.media_upload_ttl,
                                  max_size=config.max_media_size,
                                  account_quota=config.abuse.media_account_quota)
        self.siblings = Siblings(self.registry, self.directory, self.outbox, log)
        self.handoff = Handoff(self)
        self.media.reshaping = lambda: self.homes.previous is not None
        self.outbox.reroute = self.handoff.rerouted
        self.handlers = node_table(self)

    async def shut_down(self, grace: float) -> None:
        """Stop gracefully: refuse new connections (503), close every accepted
        WebSocket with 1001 (going away) and wait until their handlers are done,
        for at most ``grace`` seconds in all. Queued writes are committed when the
        storage closes afterwards (:func:`serve_node`)."""
        self.stopping.set()
        sockets = self.sockets.snapshot()
        self.log.info("stopping: closing %d connection(s) with %d", len(sockets),
                      CLOSE_GOING_AWAY)
        with trio.move_on_after(grace) as scope:
            async with trio.open_nursery() as nursery:
                for ws in sockets:
                    nursery.start_soon(self._going_away, ws)
                nursery.start_soon(self.federation.go_away)  # our own links to peers
            await self.sockets.wait_empty()  # handlers end right after their socket closed
        if scope.cancelled_caught:
            self.log.warning("stopping: %d connection(s) still open after %g s; dropping them",
                             len(self.sockets), grace)

    @staticmethod
    async def _going_away(ws) -> None:
        try:
            await ws.aclose(CLOSE_GOING_AWAY, "node stopping")
        except trio_websocket.ConnectionClosed:  # pragma: no cover - aclose is idempotent
            pass

    async def expire_loop(self, interval: float = EXPIRE_INTERVAL) -> None:
        """Delete queued envelopes, media blobs and watchers older than their TTLs, every
        ``interval`` s (default :data:`EXPIRE_INTERVAL`); runs until cancelled.

        A sweep that fails with a :class:`storage.StorageError` (e.g.
        ``StorageFull``) is logged as a warning and retried at the next interval;
        other exceptions propagate (bugs).
        """
        while True:
            try:
                gone = await self.storage.expire(time.time() - self.config.queue_ttl)
                if gone:
                    self.log.info("expired %d queued envelopes", gone)
                await self.media.expire()
                if watchers := await self.changes.expire_watchers():
                    self.log.info("expired %d device-list watchers", watchers)
            except StorageError as exc:
                self.log.warning("expiry sweep failed (%s: %s); retrying in %g s",
                                 type(exc).__name__, exc, interval)
            await trio.sleep(interval)


def check_fd_limit(config: NodeConfig, log: logging.Logger) -> int:
    """Warn if this process may open fewer file descriptors than ``max_connections``
    plus :data:`FD_HEADROOM`; return the soft limit (-1: unlimited or unknown)."""
    try:
        soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    except (OSError, ValueError):  # pragma: no cover - not on this platform
        return -1
    if soft != resource.RLIM_INFINITY and soft < config.max_connections + FD_HEADROOM:
        log.warning("the file-descriptor limit (%d, ulimit -n) is below max_connections (%d) "
                    "+ %d: connections beyond it fail with EMFILE; raise it (LimitNOFILE= in "
                    "systemd) or lower max_connections", soft, config.max_connections,
                    FD_HEADROOM)
    return -1 if soft == resource.RLIM_INFINITY else soft


async def serve_node(
    config: NodeConfig, *, storage: Storage | None = None,
    forward_timeout: float = FORWARD_TIMEOUT, stop: trio.Event | None = None,
    on_node: Callable[[Node], None] | None = None,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run one node until cancelled, or until ``stop`` is set and it has stopped
    gracefully (:meth:`Node.shut_down` within ``config.shutdown_grace``). A node that
    an unfinished reshape removes (listed only in ``config.previous_cluster``) hands
    its users over, drains its outbox, then stops gracefully by itself.

    Args:
        config: the node's configuration (:func:`relay.config.load_node_config`).
        storage: an already open storage to use instead of opening
            ``config.storage`` (tests); the caller keeps ownership.
        forward_timeout: seconds a forward may take before it goes to the outbox.
        stop: set it to stop gracefully; then this returns (storage flushed and closed).
        on_node: called with the built :class:`Node` before it serves (e.g. to watch a
            reshape's handoff).
        task_status: ``nursery.start`` gets the bound TCP port (useful with port 0).

    Raises:
        StorageError / ValueError: the storage cannot be opened; ValueError: no TLS
            certificate and no ``allow_plain`` on a loopback host.
        OSError: the port (or the admin port) cannot be bound, or the TLS files cannot
            be read.
    """
    log = logging.getLogger(f"wa_relay.node.{config.id}")
    tls = None
    if config.tls_cert is not None and config.tls_key is not None:
        tls = server_tls_context(config.tls_cert, config.tls_key)
    elif not (config.allow_plain and is_loopback(config.host)):
        raise ValueError(f"node {config.id}: no TLS certificate, and plain ws:// needs "
                         "allow_plain on a loopback host")
    check_fd_limit(config, log)
    async with AsyncExitStack() as stack:
        if storage is None:
            storage = await stack.enter_async_context(open_storage(config.storage))
        node = Node(config, storage, log, forward_timeout=forward_timeout)
        await node.handoff.load()
        if on_node is not None:
            on_node(node)
        async with trio.open_nursery() as nursery:
            watch = watch_of(node.storage)
            if watch is not None:  # several processes serve this node: hear the others
                await nursery.start(node.siblings.run, watch)
            await nursery.start(node.outbox.run)
            await nursery.start(node.forwarding.run)
            server = await nursery.start(partial(
                serve_gated_websocket, partial(handle_websocket, node), config.host, config.port,
                tls,
                message_queue_size=4, max_message_size=node.limits.max_peer_frame + FRAME_SLACK,
                receive_buffer_size=RECEIVE_BUFFER, connect_timeout=10, disconnect_timeout=5,
                opening=node.opening, log=node.log,
            ))
            if config.admin_port:
                await nursery.start(serve_admin, node, config.admin_host, config.admin_port)
            nursery.start_soon(node.federation.run)
            nursery.start_soon(node.expire_loop)
            nursery.start_soon(node.handoff.run)
            port = server.port
            log.info("node %s listening on %s:%d (ring %s)%s", config.id, config.host, port,
                     node.ring.version[:12],
                     f", admin on {config.admin_url}" if config.admin_port else "")
            node.ready.set()
            task_status.started(port)
            if not node.homes.in_ring:  # removed by a reshape: drain, then stop
                drained = trio.Event()
                nursery.start_soon(_drain_then_stop, node, drained)
                if stop is not None:
                    nursery.start_soon(_set_on, stop, drained)
                await drained.wait()
                await node.shut_down(config.shutdown_grace)
                nursery.cancel_scope.cancel()
            elif stop is not None:
                await stop.wait()
                await node.shut_down(config.shutdown_grace)
                nursery.cancel_scope.cancel()


async def _set_on(event: trio.Event, target: trio.Event) -> None:
    await event.wait()
    target.set()


async def _drain_then_stop(node: Node, drained: trio.Event, poll: float = 0.05) -> None:
    """Set ``drained`` once a node removed by a reshape handed every user over and its
    outbox has nothing left for any peer (checked every ``poll`` seconds)."""
    await node.handoff.drained.wait()
    links = node.federation.links
    while any(node.outbox.has_pending(dest) for dest in links):  # noqa: ASYNC110 - no event for "all drained"
        await trio.sleep(poll)
    node.log.info("node %s drained (not in the cluster any more): stopping", node.id)
    drained.set()
