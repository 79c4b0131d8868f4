"""In-process local clusters: ``n`` relay nodes served by :func:`relay.node.serve_node`
on 127.0.0.1 in one Trio nursery, each startable and stoppable on its own."""

from __future__ import annotations

import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal

import nacl.signing
import trio

from relay.config import DEFAULT_MAX_FRAME, NodeConfig, cluster_description
from relay.config.certs import write_self_signed
from relay.config.ring import NodeInfo, Ring
from relay.node import serve_node
from relay.protocol import Limits
from relay.protocol.cluster import PinnedCluster, sign_cluster
from storage import Storage
from storage.memory import MemoryStorage

from ._ports import LOOPBACK, free_ports

StorageKind = Literal["memory", "lmdb"]


def node_configs(
    n: int, *, storage: StorageKind = "memory", data_dir: Path | None = None,
    host: str = LOOPBACK, tls: bool = False, cluster_key: nacl.signing.SigningKey | None = None,
    cluster_version: int = 1, **overrides: Any,
) -> list[NodeConfig]:
    """Configs of an ``n``-node cluster ``n1..nN`` on free ports of ``host``, with a
    cluster description signed by a cluster key (``cluster_key``, or a new one).

    Args:
        n: number of nodes (>= 1).
        storage: ``"memory"`` (``memory://``) or ``"lmdb"``
            (``lmdb://<data_dir>/nK``, absolute; the directories are created).
        data_dir: where LMDB nodes keep their data; required with ``"lmdb"``.
        host: the interface every node listens on (its URL is ``ws://host:port``, or
            ``wss://`` with ``tls``).
        tls: give every node a self-signed certificate (in ``data_dir``, or a new
            temporary directory) and ``wss://`` URLs; else plain loopback ``ws://``
            (``allow_plain``).
        cluster_key: signs the cluster description (default: a new key).
        cluster_version: the description's version.
        overrides: further :class:`~relay.config.NodeConfig` fields, the same for
            every node (e.g. ``link_ttl=0.3``, ``max_queue=3``).

    Returns:
        One config per node, in id order; every one lists the whole cluster and a
        freshly generated Ed25519 signing key.

    Raises:
        ValueError: ``storage`` is unknown, or ``"lmdb"`` without ``data_dir``.
        OSError: ports could not be found or a directory not created.
    """
    if storage not in ("memory", "lmdb"):
        raise ValueError(f"storage must be 'memory' or 'lmdb', not {storage!r}")
    if storage == "lmdb" and data_dir is None:
        raise ValueError("lmdb storage needs a data_dir")
    ports = free_ports(n, host)
    keys = [nacl.signing.SigningKey.generate() for _ in range(n)]
    scheme = "wss" if tls else "ws"
    infos = tuple(NodeInfo(f"n{i + 1}", f"{scheme}://{host}:{p}", bytes(k.verify_key))
                  for i, (p, k) in enumerate(zip(ports, keys, strict=True)))
    limits = Limits.for_node(overrides.get("max_frame", DEFAULT_MAX_FRAME),
                             overrides.get("max_envelope"))
    doc = sign_cluster(cluster_key or nacl.signing.SigningKey.generate(),
                       cluster_description(infos, cluster_version, limits.max_frame,
                                           overrides.get("max_envelope") or 0))
    cert_root = None
    if tls:
        cert_root = Path(data_dir) if data_dir is not None else Path(
            tempfile.mkdtemp(prefix="wa-relay-tls-"))
    configs = []
    for info, port, key in zip(infos, ports, keys, strict=True):
        if storage == "lmdb":
            node_dir = Path(data_dir, info.id).absolute()
            node_dir.mkdir(parents=True, exist_ok=True)
            url = f"lmdb://{node_dir}"
        else:
            url = "memory://"
        transport: dict[str, Any] = {"allow_plain": True}
        if cert_root is not None:
            cert_dir = (cert_root / f"{info.id}-tls").absolute()
            cert_dir.mkdir(parents=True, exist_ok=True)
            cert, tls_key = cert_dir / "tls.crt", cert_dir / "tls.key"
            if not tls_key.exists():
                write_self_signed(cert, tls_key, host, info.id)
            transport = {"tls_cert": cert, "tls_key": tls_key}
        configs.append(NodeConfig(id=info.id, host=host, port=port, cluster=infos,
                                  signing_key=key, storage=url, cluster_doc=doc,
                                  **{**transport, **overrides}))
    return configs


class LocalCluster:
    """Relay nodes run as tasks of ``nursery``; each is started and stopped on its own.

    Args:
        nursery: where node tasks run; cancelling it stops every node.
        configs: one config per node, all listing the same cluster
            (:func:`node_configs`).

    Attributes:
        configs: as given (a list, in id order).
        ring: the cluster's :class:`~relay.config.ring.Ring`.
        urls: ``{node_id: "ws://host:port"}`` (``wss://`` with TLS).
        pin: the signed cluster description, verified (what a client pins).
        storages: ``{node_id: Storage}`` handed to :func:`~relay.node.serve_node`.
            A ``memory://`` node gets a :class:`~storage.memory.MemoryStorage` on
            its first start, kept across restarts; a node whose entry a test set
            before :meth:`start` uses that one (the cluster never closes it). Any
            other node (LMDB) opens ``config.storage`` itself on every start and
            has no entry.
    """

    def __init__(self, nursery: trio.Nursery, configs: list[NodeConfig]) -> None:
        self.nursery = nursery
        self.configs = configs
        self.ring = Ring(configs[0].cluster)
        self.urls = {c.id: c.node.url for c in configs}  # removed nodes of a reshape too
        doc = configs[0].cluster_doc
        self.pin = PinnedCluster.verify(doc) if doc is not None else None
        self.storages: dict[str, Storage] = {}
        self.scopes: dict[str, trio.CancelScope] = {}
        self._stopped: dict[str, trio.Event] = {}

    def config(self, node_id: str) -> NodeConfig:
        """The config of ``node_id``. Raises KeyError if there is no such node."""
        for config in self.configs:
            if config.id == node_id:
                return config
        raise KeyError(node_id)

    def url(self, node_id: str) -> str:
        """The WebSocket URL of ``node_id``."""
        return self.urls[node_id]

    def home_of(self, user_id: str) -> str:
        """The id of ``user_id``'s home node (rendezvous hashing over the ring)."""
        return self.ring.home(user_id).id

    def data_dir(self, node_id: str) -> Path:
        """The directory of an LMDB node's data. Raises ValueError for other storages."""
        url = self.config(node_id).storage
        if not url.startswith("lmdb://"):
            raise ValueError(f"node {node_id} has no data directory ({url})")
        return Path(url.removeprefix("lmdb://"))

    def running(self, node_id: str) -> bool:
        """True between :meth:`start` and :meth:`stop` of ``node_id``."""
        return node_id in self.scopes

    async def start(self, node_id: str, **serve_options: Any) -> None:
        """Start ``node_id`` and return once it listens.

        Waits first until a previous run of the node has ended (its storage
        closed), so an LMDB node can reopen its data right after :meth:`stop`.

        Args:
            serve_options: extra keyword arguments of :func:`~relay.node.serve_node`
                (e.g. ``forward_timeout``).

        Raises:
            OSError: the port could not be bound; StorageError: the storage could
            not be opened (both from the node task, through ``nursery.start``).
        """
        previous = self._stopped.get(node_id)
        if previous is not None:
            await previous.wait()
        config = self.config(node_id)
        if config.storage.startswith("memory:"):
            self.storages.setdefault(node_id, MemoryStorage())
        storage = self.storages.get(node_id)
        stopped = self._stopped[node_id] = trio.Event()

        async def run(task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
            try:
                with trio.CancelScope() as scope:
                    self.scopes[node_id] = scope
                    await serve_node(config, storage=storage, task_status=task_status,
                                     **serve_options)
            finally:
                stopped.set()

        await self.nursery.start(run)

    async def start_all(self) -> None:
        """Start every node, in id order."""
        for config in self.configs:
            await self.start(config.id)

    def ended(self, node_id: str) -> bool:
        """True once the task of ``node_id`` ended: stopped by :meth:`stop`, or, for a
        node a reshape removes, by itself once it was drained."""
        stopped = self._stopped.get(node_id)
        return stopped is not None and stopped.is_set()

    def stop(self, node_id: str) -> None:
        """Cancel ``node_id`` (it stops at its next checkpoint; :meth:`start` waits
        for that). Raises KeyError if it is not running."""
        self.scopes.pop(node_id).cancel()


@asynccontextmanager
async def open_local_cluster(
    n: int = 3, *, storage: StorageKind = "memory", data_dir: Path | None = None,
    **node_overrides: Any,
) -> AsyncIterator[LocalCluster]:
    """Run an ``n``-node cluster ``n1..nN`` on 127.0.0.1 in-process for the block.

    Every node is started (listening) before the block runs; all are stopped when
    it exits, whatever happened. ``storage``, ``data_dir`` and ``node_overrides``
    are those of :func:`node_configs`. Single nodes can be stopped and started
    again inside the block (:meth:`LocalCluster.stop` / :meth:`LocalCluster.start`).

    Example::

        async with open_local_cluster(2, storage="lmdb", data_dir=tmp_path) as cluster:
            url = cluster.urls[cluster.home_of(user_id)]

    Raises:
        ValueError: bad ``storage`` / ``data_dir``; OSError: a port could not be
        bound; StorageError: a storage could not be opened.
    """
    configs = node_configs(n, storage=storage, data_dir=data_dir, **node_overrides)
    async with trio.open_nursery() as nursery:
        cluster = LocalCluster(nursery, configs)
        await cluster.start_all()
        try:
            yield cluster
        finally:
            nursery.cancel_scope.cancel()


def reshape_configs(configs: list[NodeConfig], n: int, *,
                    cluster_key: nacl.signing.SigningKey | None = None) -> list[NodeConfig]:
    """The configs of a reshape of the cluster of ``configs`` to ``n`` nodes ``n1..nN``.

    With ``cluster_key`` (the key that signed the old description: pass the one given
    to :func:`node_configs`), every node serves a new description of the new cluster
    signed by it under the next version, as ``wa-relay sign-cluster`` does, so that
    clients pinned to the old one accept it; without it the old description stays.

    Nodes that stay keep their id, port, key and storage; new nodes get free ports,
    fresh keys and the storage kind of the others (memory, or LMDB beside them).
    Every config lists the new cluster and, as ``previous_cluster``, the old one;
    nodes the reshape removes get a config too (they drain, then stop).

    Returns:
        The configs of ``n1..nN`` followed by those of the removed nodes.
    """
    old = {c.id: c for c in configs}
    base = configs[0]
    host = base.host
    fresh = [f"n{i}" for i in range(1, n + 1) if f"n{i}" not in old]
    ports = dict(zip(fresh, free_ports(len(fresh), host), strict=True))
    keys = {nid: nacl.signing.SigningKey.generate() for nid in fresh}
    infos = []
    for i in range(1, n + 1):
        nid = f"n{i}"
        if nid in old:
            infos.append(old[nid].node)
        else:
            infos.append(NodeInfo(nid, f"ws://{host}:{ports[nid]}", bytes(keys[nid].verify_key)))
    previous = base.cluster
    doc = base.cluster_doc
    if cluster_key is not None and doc is not None:
        was = PinnedCluster.verify(doc).description
        doc = sign_cluster(cluster_key, cluster_description(
            tuple(infos), was.version + 1, was.max_frame, was.max_envelope))
    out = []
    for info in infos:
        if info.id in old:
            out.append(replace(old[info.id], cluster=tuple(infos), previous_cluster=previous,
                               cluster_doc=doc))
            continue
        storage = "memory://"
        if base.storage.startswith("lmdb://"):
            node_dir = Path(base.storage.removeprefix("lmdb://")).parent / info.id
            node_dir.mkdir(parents=True, exist_ok=True)
            storage = f"lmdb://{node_dir}"
        out.append(replace(base, id=info.id, port=ports[info.id], signing_key=keys[info.id],
                           storage=storage, cluster=tuple(infos), previous_cluster=previous,
                           cluster_doc=doc))
    for c in configs:
        if c.id not in {i.id for i in infos}:
            out.append(replace(c, cluster=tuple(infos), previous_cluster=previous,
                               cluster_doc=doc))
    return out
