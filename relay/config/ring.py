"""Rendezvous (highest-random-weight) hashing of users onto home nodes.

Every node reads the same cluster file; a user's *home* is the node with the
highest score ``int(blake2b(node_id + "\\0" + user_id, digest_size=8))``
(big-endian), ties broken by the larger node id. Adding a node moves only the
users whose new highest score is the new node's (about ``1/N`` of them);
removing one moves only that node's users.

Homes are asked for every recipient of every send, so each :class:`Ring` keeps
the last :data:`HOME_CACHE_SIZE` answers in its own bounded LRU cache (the node
list never changes for a ring, so a cached home never goes stale).

The *ring version* identifies the node list: the lowercase sha256 hex digest
of the msgpack array ``[[id, url, public_key], ...]`` sorted by id (a node with
several addresses adds a fourth element, the list of all of them, so a
one-address cluster keeps the version it always had). Peers refuse to link
when their ring versions differ.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Iterable
from dataclasses import dataclass

import msgpack

HOME_CACHE_SIZE = 16384
"""Most user -> home answers one ring remembers (about 150 bytes each)."""


@dataclass(frozen=True, slots=True)
class NodeInfo:
    """One node of the cluster file.

    Attributes:
        id: node id, e.g. ``"n1"``.
        url: the node's (first) WebSocket URL, e.g. ``"ws://127.0.0.1:7400"``.
        public_key: the node's 32-byte Ed25519 public key (peer authentication).
        urls: every address of the node, ``url`` first: several when one node id is
            served by several relay processes over one database (default ``(url,)``).
    """

    id: str
    url: str
    public_key: bytes
    urls: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if len(self.urls) <= 1:  # also ``dataclasses.replace(info, url=...)`` of one address
            object.__setattr__(self, "urls", (self.url,))
        elif self.urls[0] != self.url:
            raise ValueError(f"node {self.id}: url must be the first of urls")


def score(node_id: str, user_id: str) -> int:
    """The rendezvous weight of ``user_id`` on ``node_id`` (64-bit unsigned int)."""
    digest = hashlib.blake2b(f"{node_id}\0{user_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def ring_version(nodes: Iterable[NodeInfo]) -> str:
    """sha256 hex of the canonical sorted node list (see the module docstring)."""
    canon = sorted(([n.id, n.url, n.public_key] + ([list(n.urls)] if len(n.urls) > 1 else [])
                    for n in nodes), key=lambda row: row[0])
    return hashlib.sha256(msgpack.packb(canon, use_bin_type=True)).hexdigest()


class Ring:
    """The cluster's nodes and the user -> home mapping.

    Args:
        nodes: the cluster file's nodes; ids must be unique and non-empty.
        home_cache: most :meth:`home` answers kept (least recently used go first).

    Raises:
        ValueError: no nodes, or a duplicate node id.
    """

    def __init__(self, nodes: Iterable[NodeInfo], *, home_cache: int = HOME_CACHE_SIZE) -> None:
        self.nodes: tuple[NodeInfo, ...] = tuple(sorted(nodes, key=lambda n: n.id))
        if not self.nodes:
            raise ValueError("a ring needs at least one node")
        self._by_id = {n.id: n for n in self.nodes}
        if len(self._by_id) != len(self.nodes):
            raise ValueError("duplicate node id in the cluster")
        self.version: str = ring_version(self.nodes)
        # Per instance (no globals): a C-level LRU of the pure function below.
        self._cached_home = functools.lru_cache(maxsize=home_cache)(self._compute_home)

    def home(self, user_id: str) -> NodeInfo:
        """The home node of ``user_id`` (highest rendezvous score; memoised)."""
        return self._cached_home(user_id)

    def _compute_home(self, user_id: str) -> NodeInfo:
        return max(self.nodes, key=lambda n: (score(n.id, user_id), n.id))

    def node(self, node_id: str) -> NodeInfo | None:
        """The node with id ``node_id``, or ``None``."""
        return self._by_id.get(node_id)

    def __contains__(self, node_id: object) -> bool:
        return node_id in self._by_id

    def __len__(self) -> int:
        return len(self.nodes)
