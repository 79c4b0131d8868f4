"""Whatever listens at a peer's address (a stale address after a reshape, a port
taken by another program, a network attacker on the path of a plain link) could
stop the node dialling it, two ways:

* the node's outgoing link closes after a refused handshake, and a Ping sent after
  that Close made trio-websocket's reader answer with a Pong that wsproto refuses
  (``LocalProtocolError`` in ``LOCAL_CLOSING``);
* an upgrade answer that is not HTTP made the reader "answer" 400 as the client
  (wsproto's hint for a malformed message), which h11 refuses.

Either error left the peer link's task and the node's nursery. The connecting side
now uses :class:`relay.net.wsclose.SafeWebSocket` too: the link just goes down and
is retried, and the node keeps serving. (The peer link's task also got a boundary of
its own, :meth:`relay.services.federation.PeerLink.run`: an unexpected error is
logged and the link retried; these tests check that nothing unexpected happens.)"""

from __future__ import annotations

import base64
import hashlib
import logging

import msgpack
import trio
from rawws import port_of, read_response
from relay_harness import Cluster, connect, make_configs

from relay.net.wsio import unmask

ACCEPT_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # RFC 6455 1.3


def _server_frame(opcode: int, payload: bytes) -> bytes:
    assert len(payload) < 126
    return bytes((0x80 | opcode, len(payload))) + payload


async def _client_frame(stream: trio.SocketStream, buf: bytearray) -> tuple[int, bytes]:
    """The next (masked, short) frame the node sends: ``(opcode, payload)``."""
    while True:
        if len(buf) >= 6:
            n = buf[1] & 0x7F
            assert n < 126, "a short frame expected"
            if len(buf) >= 6 + n:
                opcode, payload = buf[0] & 0x0F, unmask(buf[6:6 + n], buf[2:6])
                del buf[:6 + n]
                return opcode, payload
        more = await stream.receive_some(65536)
        assert more, "the node closed the TCP connection first"
        buf += more


async def test_a_ping_after_the_nodes_close_on_its_peer_link_does_not_stop_it(nursery,
                                                                            caplog) -> None:
    caplog.set_level(logging.ERROR)
    configs = make_configs(2)
    closes_seen = 0
    second_close = trio.Event()

    async def impostor(stream: trio.SocketStream) -> None:
        """Answers the upgrade and refuses the hello; pings once the node says Close."""
        nonlocal closes_seen
        head, rest = await read_response(stream)
        key = next(line.split(b":", 1)[1].strip() for line in head.split(b"\r\n")
                   if line.lower().startswith(b"sec-websocket-key:"))
        accept = base64.b64encode(hashlib.sha1(key + ACCEPT_GUID).digest())
        await stream.send_all(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                              b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept
                              + b"\r\n\r\n")
        buf = bytearray(rest)
        opcode, payload = await _client_frame(stream, buf)
        hello = msgpack.unpackb(payload)
        assert hello["t"] == "hello", hello
        await stream.send_all(_server_frame(2, msgpack.packb(
            {"t": "error", "id": hello["id"], "code": "unavailable", "message": "not now"})))
        while opcode != 8:
            opcode, payload = await _client_frame(stream, buf)
        await stream.send_all(_server_frame(9, b"ping after your close"))
        closes_seen += 1
        if closes_seen == 2:
            second_close.set()
        await stream.receive_some(65536)  # until the node drops it

    await nursery.start(trio.serve_tcp, impostor, port_of(configs[1].node.url))
    cluster = Cluster(nursery, configs)
    with trio.fail_after(30):
        await cluster.start("n1")  # n1 dials n2's address: the impostor
        await second_close.wait()  # twice: the link is retried, the node lives
        async with connect(cluster.url("n1")) as honest:
            assert len((await honest.hello()).nonce) >= 16
    assert [r.getMessage() for r in caplog.records] == []  # a link down, nothing unexpected


async def test_an_answer_to_its_upgrade_that_is_not_http_does_not_stop_the_node(nursery,
                                                                             caplog) -> None:
    caplog.set_level(logging.ERROR)
    configs = make_configs(2)
    answered = 0
    second = trio.Event()

    async def impostor(stream: trio.SocketStream) -> None:
        nonlocal answered
        await read_response(stream)
        await stream.send_all(b"\x16\x03\x01 this is not HTTP\r\n\r\n")
        answered += 1
        if answered == 2:
            second.set()
        await stream.receive_some(65536)  # until the node drops it

    await nursery.start(trio.serve_tcp, impostor, port_of(configs[1].node.url))
    cluster = Cluster(nursery, configs)
    with trio.fail_after(30):
        await cluster.start("n1")
        await second.wait()  # retried: the node lives
        async with connect(cluster.url("n1")) as honest:
            assert len((await honest.hello()).nonce) >= 16
    assert [r.getMessage() for r in caplog.records] == []  # a link down, nothing unexpected
