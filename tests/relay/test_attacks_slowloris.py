"""Attacks on a node's accept path before the WebSocket upgrade (slowloris): idle TCP
connections that never send their upgrade request each hold a file descriptor for the
connect timeout (10 s). Uncounted, a few hundred of them from one address used up a
wa-relay process's descriptors (``accept returned EMFILE``) and every honest client
was refused; :mod:`relay.net.wsio` now counts them per address from the accept."""

from __future__ import annotations

import trio
from relay_harness import Cluster, connect, make_configs

from relay.net.admission import PENDING_GRACE

CAP = 8
IDLE = 40
ATTACKER = "127.0.0.2"


async def _idle_socket(port: int) -> trio.socket.SocketType:
    """A TCP connection from :data:`ATTACKER` to the node that sends nothing."""
    sock = trio.socket.socket()
    await sock.bind((ATTACKER, 0))
    await sock.connect(("127.0.0.1", port))
    return sock


async def test_idle_sockets_before_the_upgrade_are_capped_per_address(nursery) -> None:
    """40 idle sockets from one address: all but ``max_pending_per_ip`` are closed by
    the node at once (none is past the grace period yet), and a client from another
    address still gets its challenge."""
    nodes = []
    cluster = Cluster(nursery, make_configs(1, max_pending_per_ip=CAP))
    await cluster.start("n1", on_node=nodes.append)
    (node,) = nodes
    port = int(cluster.url("n1").rsplit(":", 1)[1])
    with trio.fail_after(20):
        start = trio.current_time()
        socks = [await _idle_socket(port) for _ in range(IDLE)]
        closed = 0
        surplus_closed = trio.Event()

        async def watch(sock: trio.socket.SocketType) -> None:
            nonlocal closed
            try:
                data = await sock.recv(1)
            except ConnectionResetError:
                data = b""
            assert data == b"", data
            closed += 1
            if closed == IDLE - CAP:
                surplus_closed.set()

        async with trio.open_nursery() as watching:
            for sock in socks:
                watching.start_soon(watch, sock)
            await surplus_closed.wait()  # the node closes the surplus by itself
            assert trio.current_time() - start < PENDING_GRACE + 5
            assert node.opening.pending(ATTACKER) == CAP
            async with connect(cluster.url("n1")) as honest:  # from 127.0.0.1
                challenge = await honest.hello()
                assert challenge.nonce
            watching.cancel_scope.cancel()
        for sock in socks:
            sock.close()
        assert closed == IDLE - CAP
