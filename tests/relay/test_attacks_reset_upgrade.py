"""A client that sends its WebSocket upgrade request and resets the TCP connection at
once (RST: what a NAT drop, a proxy cut or a killed client does). The node then
asks the socket for its peer's address to admit it, and ``getpeername`` fails with
ENOTCONN: that ``OSError`` went up through trio-websocket's server into the node's
nursery and stopped the whole node ("cannot run the node: [Errno 107] Transport
endpoint is not connected", seen in the long fault run). The node must drop such a
connection and keep serving everyone else."""

from __future__ import annotations

import socket
import struct

import trio
from relay_harness import Cluster, connect, make_configs

ATTEMPTS = 300
REQUEST = (b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
           b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
           b"Sec-WebSocket-Version: 13\r\n\r\n")


async def _request_then_reset(port: int) -> None:
    sock = trio.socket.socket()
    try:
        await sock.connect(("127.0.0.1", port))
        await sock.send(REQUEST)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    finally:
        sock.close()  # with SO_LINGER 0: an RST instead of a FIN


async def test_upgrade_requests_reset_at_once_do_not_stop_the_node(nursery) -> None:
    cluster = Cluster(nursery, make_configs(1))
    await cluster.start("n1")
    port = int(cluster.url("n1").rsplit(":", 1)[1])
    with trio.fail_after(60):
        for i in range(ATTEMPTS):
            await _request_then_reset(port)
            if i % 50 == 49:  # let the node work through what it accepted
                async with connect(cluster.url("n1")) as honest:
                    challenge = await honest.hello()
                    assert challenge.nonce
        async with connect(cluster.url("n1")) as honest:
            challenge = await honest.hello()
            assert len(challenge.nonce) >= 16
