"""Test support shipped with the relay (like :mod:`trio.testing`): local clusters
for tests, benchmarks and the demo, on 127.0.0.1 only.

In-process (one Trio nursery, :func:`relay.node.serve_node` per node)::

    from relay.testing import open_local_cluster

    async with open_local_cluster(3) as cluster:                 # memory storage
        url = cluster.urls[cluster.home_of(user_id)]
        cluster.stop("n2"); await cluster.start("n2")            # one node down and up
    async with open_local_cluster(2, storage="lmdb", data_dir=tmp_path, link_ttl=0.3) as c:
        ...

Tests that own a nursery build :class:`LocalCluster` from :func:`node_configs`
and start nodes themselves (e.g. to hand a node a prepared storage first).

As processes (``wa-relay serve`` / ``wa-relay cluster``): :func:`free_base_port`
picks a free port range, :class:`LoggedProcess` starts the program with its
output logged and reads its ``ready <node_id> <url>`` lines, :func:`tool` and
:func:`child_env` give the argv prefix and environment of this installation.
:class:`ProcessCluster` lays out a cluster and runs its nodes as processes, a node
possibly served by several processes (one address each) over a shared database.

Nothing here is used by a running relay; it imports :mod:`relay.node` but
nothing imports it back.
"""

from ._cluster import (
    LocalCluster,
    StorageKind,
    node_configs,
    open_local_cluster,
    reshape_configs,
)
from ._homes import ProcessCluster, ProcessFailed
from ._ports import LOOPBACK, free_base_port, free_ports, port_is_free
from ._process import LoggedProcess, child_env, file_tail, tool

__all__ = [
    "LOOPBACK",
    "LocalCluster",
    "LoggedProcess",
    "ProcessCluster",
    "ProcessFailed",
    "StorageKind",
    "child_env",
    "file_tail",
    "free_base_port",
    "free_ports",
    "node_configs",
    "open_local_cluster",
    "reshape_configs",
    "port_is_free",
    "tool",
]
