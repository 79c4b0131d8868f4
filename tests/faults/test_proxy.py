"""The fault suite's TCP proxy (faults.proxy) on real 127.0.0.1 sockets: pass, reset,
silent (resumes at the heal), dead (never resumes), and source labels."""

from __future__ import annotations

import os
import socket
import struct

import pytest
import trio

from faults.owners import connection_owner
from faults.proxy import CLIENT, DEAD, RESET, SILENT, Network, open_listener, serve_proxy

GUARD = 10  # seconds for any one test


async def _echo(stream: trio.SocketStream) -> None:
    try:
        async for data in stream:
            await stream.send_all(data)
    except trio.BrokenResourceError:
        pass  # the proxy reset its side: the test is about that


async def _setup(nursery: trio.Nursery, network: Network) -> int:
    """An echo server behind a proxy for destination ``n1``; returns the proxy's port."""
    (echo,) = await trio.open_tcp_listeners(0, host="127.0.0.1")
    nursery.start_soon(trio.serve_listeners, _echo, [echo])
    listener = await open_listener()
    await nursery.start(serve_proxy, network, "n1", listener, echo.socket.getsockname()[1])
    return listener.socket.getsockname()[1]


class Streams:
    """Client connections a test opens; all closed at the end of the ``async with``."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.opened: list[trio.SocketStream] = []

    async def open(self) -> trio.SocketStream:
        stream = await trio.open_tcp_stream("127.0.0.1", self.port)
        self.opened.append(stream)
        return stream

    async def __aenter__(self) -> Streams:
        return self

    async def __aexit__(self, *exc: object) -> None:
        for stream in self.opened:
            await stream.aclose()


async def _roundtrip(stream: trio.SocketStream, data: bytes) -> bytes:
    await stream.send_all(data)
    got = b""
    while len(got) < len(data):
        chunk = await stream.receive_some(65536)
        if not chunk:
            break
        got += chunk
    return got


async def test_pass_and_reset():
    network = Network()
    with trio.fail_after(GUARD):
        async with trio.open_nursery() as nursery:
            async with Streams(await _setup(nursery, network)) as streams:
                stream = await streams.open()
                assert await _roundtrip(stream, b"hello") == b"hello"
                network.cut({(CLIENT, "n1")}, RESET)
                with pytest.raises(trio.BrokenResourceError):  # ECONNRESET, not a clean EOF
                    await _roundtrip(stream, b"x")
                fresh = await streams.open()
                with pytest.raises(trio.BrokenResourceError):
                    await _roundtrip(fresh, b"x")
                network.heal()
                again = await streams.open()
                assert await _roundtrip(again, b"back") == b"back"
                assert network.counts["reset client"] == 2
            nursery.cancel_scope.cancel()


async def test_silent_holds_then_resumes_and_dead_stays_dark():
    network = Network(dead_ttl=1.0)
    with trio.fail_after(GUARD):
        async with trio.open_nursery() as nursery:
            async with Streams(await _setup(nursery, network)) as streams:
                quiet = await streams.open()
                assert await _roundtrip(quiet, b"a") == b"a"
                network.cut({(CLIENT, "n1")}, SILENT)
                await quiet.send_all(b"held")
                with trio.move_on_after(0.3) as waited:
                    await quiet.receive_some(10)
                assert waited.cancelled_caught  # nothing comes back while silent
                network.heal()
                got = b""
                while len(got) < 4:
                    got += await quiet.receive_some(10)
                assert got == b"held"  # the bytes waited, as TCP would keep them

                network.cut({(CLIENT, "n1")}, DEAD)
                await quiet.send_all(b"lost")
                network.heal()
                with trio.move_on_after(0.3) as waited:
                    await quiet.receive_some(10)
                assert waited.cancelled_caught  # a dead connection does not resume
                fresh = await streams.open()
                assert await _roundtrip(fresh, b"new") == b"new"  # new ones pass
                with pytest.raises(trio.BrokenResourceError):  # reset after dead_ttl
                    while True:
                        if not await quiet.receive_some(10):
                            raise AssertionError("closed cleanly instead of a reset")
            nursery.cancel_scope.cancel()


async def test_a_side_that_resets_ends_only_its_connection():
    """A client that aborts (TCP reset) while the proxy reads ends that connection;
    the proxy keeps serving."""
    network = Network()
    with trio.fail_after(GUARD):
        async with trio.open_nursery() as nursery:
            async with Streams(await _setup(nursery, network)) as streams:
                for _ in range(3):
                    rude = await streams.open()
                    assert await _roundtrip(rude, b"hi") == b"hi"
                    rude.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                           struct.pack("ii", 1, 0))
                    await rude.send_all(b"unanswered")  # in flight when the reset comes
                    rude.socket.close()
                polite = await streams.open()
                assert await _roundtrip(polite, b"still here") == b"still here"
            nursery.cancel_scope.cancel()


async def test_rules_apply_per_source():
    """A node-to-node cut leaves client connections to the same node alone."""
    network = Network()
    network.owners[os.getpid()] = "n2"  # connections this process opens count as node n2's
    with trio.fail_after(GUARD):
        async with trio.open_nursery() as nursery:
            async with Streams(await _setup(nursery, network)) as streams:
                peer = await streams.open()
                assert await _roundtrip(peer, b"p") == b"p"
                assert network.open_connections() == {"n2->n1 pass": 1}
                network.cut({("n3", "n1")}, RESET)
                assert await _roundtrip(peer, b"still") == b"still"
                network.cut({("n2", "n1")}, RESET)
                with pytest.raises(trio.BrokenResourceError):
                    await _roundtrip(peer, b"x")
            nursery.cancel_scope.cancel()


async def test_connection_owner_finds_the_process():
    (listener,) = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listener.socket.getsockname()[1]
    with trio.fail_after(GUARD):
        client = await trio.open_tcp_stream("127.0.0.1", port)
        server = await listener.accept()
        peer_port = server.socket.getpeername()[1]
        assert connection_owner(peer_port, port, {os.getpid(): "me"}) == "me"
        assert connection_owner(peer_port, port, {1: "init"}) is None
        await client.aclose()
        await server.aclose()
        await listener.aclose()
