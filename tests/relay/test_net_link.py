"""The Trio connection layer (:mod:`relay.net`) against a scripted other end on 127.0.0.1
(a trio-websocket server whose handler each test writes): out-of-order answers, the
window, deadlines, keepalive, pings from the other end, a slow push consumer; and a
node's peer link through a black-holing proxy (:mod:`tests.netproxy`)."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Awaitable, Callable
from functools import partial

import pytest
import trio
from relay_harness import Cluster, make_configs
from trio_websocket import ConnectionClosed, WebSocketRequest, serve_websocket

from relay.net import (
    ConnectionLost,
    KeepaliveConfig,
    LinkSettings,
    RequestTimeout,
    open_link,
)
from relay.protocol import DEFAULT_LIMITS, read_frame, write_frame
from relay.protocol.frames import Deliver, DeliverItem, Envelope, Frame, Ok, Ping, Synced
from relay.services.federation import PEER_LINK_SETTINGS, LinkDown, PeerLink
from tests.netproxy import Proxy

DEADLINE = 10
QUIET = LinkSettings(keepalive=KeepaliveConfig(interval=0), request_timeout=5.0)
Handler = Callable[..., Awaitable[None]]


async def _serve(nursery: trio.Nursery, handler: Handler) -> str:
    async def accept(request: WebSocketRequest) -> None:
        ws = await request.accept()
        try:
            await handler(ws)
        except ConnectionClosed:
            pass

    server = await nursery.start(partial(serve_websocket, accept, "127.0.0.1", 0,
                                         ssl_context=None))
    return f"ws://127.0.0.1:{server.port}"


async def _recv(ws) -> Frame:
    return read_frame(await ws.get_message())


async def _send(ws, frame: Frame) -> None:
    await ws.send_message(write_frame(frame))


def _deliver(seq: int) -> Deliver:
    return Deliver(id=0, items=[DeliverItem(seq=seq, envelope=Envelope(b"m" * 16, "u" * 52, 0,
                                                                       1, "olm", b"x"))])


async def test_answers_out_of_order_reach_their_requests(nursery) -> None:
    async def reverse(ws) -> None:
        got = [await _recv(ws) for _ in range(5)]
        for frame in reversed(got):
            await _send(ws, Ok(id=frame.id))

    url = await _serve(nursery, reverse)
    with trio.fail_after(DEADLINE):
        async with open_link(url, settings=QUIET) as link:
            answers: dict[int, Frame] = {}

            async def ask(i: int) -> None:
                answers[i] = await link.request(Ping(id=0))

            async with trio.open_nursery() as n:
                for i in range(5):
                    n.start_soon(ask, i)
    assert sorted(a.id for a in answers.values()) == [1, 2, 3, 4, 5]
    assert all(isinstance(a, Ok) for a in answers.values())


async def test_the_window_bounds_requests_in_flight(nursery) -> None:
    arrived: list[int] = []
    two, release = trio.Event(), trio.Event()

    async def hold(ws) -> None:
        while True:
            frame = await _recv(ws)
            arrived.append(frame.id)
            if len(arrived) == 2:
                two.set()
                await release.wait()
            await _send(ws, Ok(id=frame.id))

    url = await _serve(nursery, hold)
    settings = LinkSettings(keepalive=KeepaliveConfig(interval=0), window=2)
    with trio.fail_after(DEADLINE):
        async with open_link(url, settings=settings) as link:
            async with trio.open_nursery() as n:
                for _ in range(4):
                    n.start_soon(link.request, Ping(id=0))
                await two.wait()
                await trio.sleep(0.2)  # nothing more leaves while two are unanswered
                assert arrived == [1, 2]
                release.set()
    assert arrived == [1, 2, 3, 4]


async def test_a_deadline_gives_the_request_up_and_keeps_the_link(nursery) -> None:
    async def ignore_first(ws) -> None:
        first = await _recv(ws)
        second = await _recv(ws)
        await _send(ws, Ok(id=second.id))
        await _send(ws, Ok(id=first.id))  # late: dropped

        while True:
            frame = await _recv(ws)
            await _send(ws, Ok(id=frame.id))

    url = await _serve(nursery, ignore_first)
    with trio.fail_after(DEADLINE):
        async with open_link(url, settings=QUIET) as link:
            with pytest.raises(RequestTimeout) as info:
                await link.request(Ping(id=0), timeout=0.3)
            assert info.value.sent and "within 0.3s" in str(info.value)
            assert await link.request(Ping(id=0)) == Ok(id=2)
            assert await link.request(Ping(id=0)) == Ok(id=3)  # the late ok(1) was dropped
            assert not link.is_closed


async def test_a_silent_other_end_is_declared_dead(nursery) -> None:
    async def go_silent(ws) -> None:
        await _recv(ws)
        await trio.sleep_forever()  # reads nothing more, answers nothing, closes nothing

    url = await _serve(nursery, go_silent)
    settings = LinkSettings(keepalive=KeepaliveConfig(interval=0.2, timeout=0.2))
    with trio.fail_after(DEADLINE):
        async with open_link(url, settings=settings) as link:
            start = trio.current_time()
            with pytest.raises(ConnectionLost) as info:
                await link.request(Ping(id=0))
            took = trio.current_time() - start
            assert info.value.sent
            assert "no answer within 0.2s to a keepalive ping" in str(info.value)
            with pytest.raises(trio.EndOfChannel):
                await link.pushes.receive()
            with pytest.raises(ConnectionLost):
                await link.send(Ping(id=0), stream=True)
    assert took <= 0.4 + 1.0, took


async def test_the_other_ends_ping_is_answered_not_pushed(nursery) -> None:
    got: list[Frame] = []

    async def ping_first(ws) -> None:
        await _send(ws, Ping(id=7))
        got.append(await _recv(ws))
        await _send(ws, Synced(id=0))
        await trio.sleep_forever()

    url = await _serve(nursery, ping_first)
    with trio.fail_after(DEADLINE):
        async with open_link(url, settings=QUIET) as link:
            assert await link.pushes.receive() == Synced(id=0)
    assert got == [Ok(id=7)]


async def test_a_slow_push_consumer_does_not_kill_the_link(nursery) -> None:
    """The reader waits for the consumer (bounded pushes); meanwhile the pings' answers
    stay unread, which must not count as the other end's silence."""
    async def flood(ws) -> None:
        for seq in range(1, 9):
            await _send(ws, _deliver(seq))
        while True:
            frame = await _recv(ws)
            await _send(ws, Ok(id=frame.id))

    url = await _serve(nursery, flood)
    settings = LinkSettings(keepalive=KeepaliveConfig(interval=0.1, timeout=0.1),
                            push_buffer=2)
    with trio.fail_after(DEADLINE):
        async with open_link(url, settings=settings) as link:
            await trio.sleep(1.0)  # ten keepalive deadlines without reading
            seqs = [(await link.pushes.receive()).items[0].seq for _ in range(8)]
            assert seqs == list(range(1, 9))
            assert isinstance(await link.request(Ping(id=0)), Ok)
            assert not link.is_closed


async def test_a_black_holed_peer_link_goes_down_and_comes_back(nursery, caplog) -> None:
    """A node's outgoing peer link through a proxy that stops forwarding: the keepalive
    takes it down (one warning), requests fail with LinkDown, and after the heal it is
    up again and serves."""
    caplog.set_level(logging.INFO, logger="wa_relay")
    cluster = Cluster(nursery, make_configs(2))
    await cluster.start("n1")
    proxy = Proxy(int(cluster.url("n1").rsplit(":", 1)[1]))
    await nursery.start(proxy.serve)
    n2 = cluster.config("n2")
    peer = dataclasses.replace(n2.cluster[0], url=proxy.url)  # n1, reached through the proxy
    settings = dataclasses.replace(PEER_LINK_SETTINGS, connect_timeout=0.5,
                                   keepalive=KeepaliveConfig(interval=0.2, timeout=0.2))
    link = PeerLink("n2", n2.signing_key, cluster.ring, peer, DEFAULT_LIMITS,
                    logging.getLogger("wa_relay.node.n2"), settings)
    with trio.fail_after(DEADLINE):
        nursery.start_soon(link.run)
        await link.connected.wait()
        assert isinstance(await link.request(Ping(id=0)), Ok)
        proxy.blackhole()
        with pytest.raises(LinkDown):
            await link.request(Ping(id=0))
        assert trio.current_time() - proxy.blackholed_at <= 0.4 + 1.0
        while True:  # logged once the link's context has closed; fail_after bounds it
            warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
            if warnings:
                break
            await trio.sleep(0.01)
        (down,) = warnings
        assert down.startswith("peer link to n1 down: connection to ws://127.0.0.1:")
        assert "no answer within 0.2s to a keepalive ping" in down
        proxy.heal()
        await link.connected.wait()
        assert isinstance(await link.request(Ping(id=0)), Ok)


@pytest.mark.parametrize("how", ["close", "reset"])
async def test_a_connection_closed_before_the_websocket_answer_fails_at_once(nursery, how) -> None:
    """Fault-suite finding 4: a proxy or load balancer whose node is down accepts TCP and
    closes (or resets) it; the client fails at once, not after its connect timeout."""
    from relay.net import ConnectFailed

    async def drop(stream: trio.SocketStream) -> None:
        if how == "reset":
            import socket
            import struct

            stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        await stream.aclose()

    listeners = await nursery.start(trio.serve_tcp, drop, 0)
    port = listeners[0].socket.getsockname()[1]
    settings = dataclasses.replace(QUIET, connect_timeout=30.0)
    started = trio.current_time()
    with trio.fail_after(DEADLINE), pytest.raises(ConnectFailed) as failed:
        async with open_link(f"ws://127.0.0.1:{port}", settings=settings):
            pass
    assert trio.current_time() - started < 5  # not the 30 s connect timeout
    assert "closed before the WebSocket handshake was answered" in str(failed.value)
