"""One relay node: storage, ring, directory, delivery, federation, outbox, server.

``serve_node(config)`` runs until cancelled and supports ``nursery.start``::

    async with trio.open_nursery() as nursery:
        port = await nursery.start(serve_node, config)   # listening from here on
        ...
        nursery.cancel_scope.cancel()

Logs go to the ``wa_relay.node.<id>`` logger (and ``config.log_file``, if
set): metadata only (user id prefixes, device ids, codes), never message
bodies or keys.
"""

from __future__ import annotations

import logging
import time
from contextlib import AsyncExitStack
from functools import partial

import trio

from relay.admission import Admission
from relay.config import NodeConfig
from relay.delivery import DeviceRegistry
from relay.directory import Directory
from relay.federation import Federation
from relay.forwarding import Forwarding
from relay.full_log import StorageFullLog
from relay.linking import Linking
from relay.listener import handle_websocket
from relay.media import MediaService
from relay.notices import DeviceListChanges
from relay.outbox import Outbox
from relay.protocol import Limits
from relay.ring import Ring
from relay.router import Router
from relay.services.table import node_table
from relay.wsio import serve_gated_websocket
from storage import Storage, StorageError, open_storage

FORWARD_TIMEOUT = 5.0  # seconds before a forward is given to the outbox

EXPIRE_INTERVAL = 300.0  # seconds between TTL sweeps
FRAME_SLACK = 64 * 1024  # bytes above max_frame that still get a too_large answer
RECEIVE_BUFFER = 64 * 1024
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class Node:
    """The wired components of one running node (built by :func:`serve_node`).

    Attributes:
        id: node id. ring: the cluster ring. limits: frame limits.
        storage, directory, registry, federation, outbox, router, forwarding: components
            (``forwarding``: the per-destination ``forward_batch`` lanes).
        handlers: the per-service handler table (:func:`relay.services.table.node_table`).
        linking: the linking mailboxes. changes: device-list changes (watchers, notices).
        media: media uploads and downloads. admission: connection counts and caps.
        signing_key: the node's Ed25519 key. log: the node's logger.
        full_log: rate-limited warnings about ``storage_full`` refusals.
    """

    def __init__(
        self, config: NodeConfig, storage: Storage, log: logging.Logger, *,
        forward_timeout: float = FORWARD_TIMEOUT,
    ) -> None:
        self.config = config
        self.id = config.id
        self.signing_key = config.signing_key
        self.log = log
        self.full_log = StorageFullLog(log)
        self.ring = Ring(config.cluster)
        self.limits = Limits.for_node(config.max_frame, config.max_envelope)
        self.admission = Admission(config.max_connections, config.max_pending_per_ip)
        self.storage = storage
        self.directory = Directory(storage, self.ring, config.id)
        self.registry = DeviceRegistry()
        self.federation = Federation(config.id, config.signing_key, self.ring, self.limits, log)
        self.outbox = Outbox(storage, self.federation, self.registry.notify,
                             queue_ttl=config.queue_ttl, timeout=forward_timeout,
                             limits=self.limits, log=log)
        self.changes = DeviceListChanges(
            config.id, self.ring, storage, self.directory, self.registry, self.federation,
            self.outbox, max_queue=config.max_queue, timeout=forward_timeout, log=log,
        )
        self.router = Router(config.id, self.ring, storage, self.directory, self.registry.notify,
                             max_queue=config.max_queue, on_stale=self.changes.watch)
        self.forwarding = Forwarding(self.federation, self.outbox, limits=self.limits,
                                     timeout=forward_timeout, log=log)
        self.router.attach(self.forwarding)
        self.linking = Linking(config.id, self.ring, self.federation, ttl=config.link_ttl,
                               max_per_owner=config.max_mailboxes_per_ip)
        self.media = MediaService(config.id, self.ring, storage, self.federation, log,
                                  quota=config.media_quota, ttl=config.media_ttl,
                                  upload_ttl=config.media_upload_ttl,
                                  max_size=config.max_media_size)
        self.handlers = node_table(self)

    async def expire_loop(self, interval: float = EXPIRE_INTERVAL) -> None:
        """Delete queued envelopes and media blobs older than their TTLs, every
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
            except StorageError as exc:
                self.log.warning("expiry sweep failed (%s: %s); retrying in %g s",
                                 type(exc).__name__, exc, interval)
            await trio.sleep(interval)


async def serve_node(
    config: NodeConfig, *, storage: Storage | None = None,
    forward_timeout: float = FORWARD_TIMEOUT,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run one node until cancelled.

    Args:
        config: the node's configuration (:func:`relay.config.load_node_config`).
        storage: an already open storage to use instead of opening
            ``config.storage`` (tests); the caller keeps ownership.
        forward_timeout: seconds a forward may take before it goes to the outbox.
        task_status: ``nursery.start`` gets the bound TCP port (useful with port 0).

    Raises:
        StorageError / ValueError: the storage cannot be opened.
        OSError: the port cannot be bound.
    """
    log = logging.getLogger(f"wa_relay.node.{config.id}")
    async with AsyncExitStack() as stack:
        if config.log_file is not None:
            handler = logging.FileHandler(config.log_file, encoding="utf-8")
            handler.setFormatter(logging.Formatter(LOG_FORMAT))
            log.addHandler(handler)
            if log.level == logging.NOTSET or log.level > logging.INFO:
                log.setLevel(logging.INFO)
            stack.callback(handler.close)
            stack.callback(log.removeHandler, handler)
        if storage is None:
            storage = await stack.enter_async_context(open_storage(config.storage))
        node = Node(config, storage, log, forward_timeout=forward_timeout)
        async with trio.open_nursery() as nursery:
            await nursery.start(node.outbox.run)
            await nursery.start(node.forwarding.run)
            server = await nursery.start(partial(
                serve_gated_websocket, partial(handle_websocket, node), config.host, config.port,
                None,
                message_queue_size=4, max_message_size=node.limits.max_peer_frame + FRAME_SLACK,
                receive_buffer_size=RECEIVE_BUFFER, connect_timeout=10, disconnect_timeout=5,
            ))
            nursery.start_soon(node.federation.run)
            nursery.start_soon(node.expire_loop)
            port = server.port
            log.info("node %s listening on %s:%d (ring %s)", config.id, config.host, port,
                     node.ring.version[:12])
            task_status.started(port)
