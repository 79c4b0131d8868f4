"""Which local process opened a TCP connection: Linux ``/proc`` lookups.

The proxy in :mod:`faults.proxy` accepts every connection on 127.0.0.1, from
relay nodes (peer links) and from ``wa-cli`` alike. To cut only the links
between two given nodes it needs to know who connected: the connecting socket
is the row of ``/proc/net/tcp`` whose local port is the peer port the proxy
sees and whose remote port is the proxy's; its inode names the socket, and
the process holding ``socket:[inode]`` among its file descriptors owns it.

Linux only (the suite runs its nodes on 127.0.0.1, IPv4).
"""

from __future__ import annotations

import os
from collections.abc import Mapping

_TCP_TABLE = "/proc/net/tcp"


def socket_inode(local_port: int, remote_port: int, table: str = _TCP_TABLE) -> int | None:
    """The inode of the IPv4 socket with ``local_port`` connected to ``remote_port``.

    Args:
        local_port: the port of the socket we look for (the connecting side).
        remote_port: the port it is connected to (the proxy's listening port).
        table: the ``/proc/net/tcp`` file to read.

    Returns:
        The inode, or ``None`` if no such socket exists (it was closed meanwhile)
        or the table cannot be read.
    """
    try:
        with open(table, encoding="ascii") as f:
            next(f, None)  # header
            for line in f:
                fields = line.split()
                if len(fields) < 10:
                    continue
                local, remote = fields[1], fields[2]
                if (int(local.rsplit(":", 1)[1], 16) == local_port
                        and int(remote.rsplit(":", 1)[1], 16) == remote_port):
                    return int(fields[9])
    except OSError:
        return None
    return None


def pid_holding(inode: int, pids: Mapping[int, str]) -> str | None:
    """The label (value of ``pids``) of the first process holding socket ``inode``.

    Processes that exited, or whose descriptors we may not read, are skipped.
    """
    target = f"socket:[{inode}]"
    for pid, label in pids.items():
        fd_dir = f"/proc/{pid}/fd"
        try:
            names = os.listdir(fd_dir)
        except OSError:
            continue
        for name in names:
            try:
                if os.readlink(f"{fd_dir}/{name}") == target:
                    return label
            except OSError:
                continue
    return None


def connection_owner(peer_port: int, listen_port: int, pids: Mapping[int, str]) -> str | None:
    """The label of the process (among ``pids``: ``{pid: label}``) that opened the
    connection from ``127.0.0.1:peer_port`` to our listener on ``listen_port``;
    ``None`` if it is none of them (or could not be found)."""
    inode = socket_inode(peer_port, listen_port)
    if inode is None or inode == 0:
        return None
    return pid_holding(inode, pids)
