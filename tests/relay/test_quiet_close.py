"""Closes and ended connections: every request read before a Close is answered first,
and a connection that ends under pushes and answers logs no error."""

from __future__ import annotations

import logging
import os
from urllib.parse import urlsplit

import trio
from relay_harness import connect, device_homed_at, publish, session
from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Request,
)

from relay.protocol import SUPPORTED_VERSIONS, auth_message, read_frame, write_frame
from relay.protocol.frames import Auth, AuthOk, Challenge, Frame, Hello, Send, Sent, Sync


class RawWebSocket:
    """A WebSocket client on a bare TCP stream (wsproto), so a test decides exactly
    which bytes go out in one write."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.ws = WSConnection(ConnectionType.CLIENT)
        self._parts: list[bytes] = []
        self.events: list = []

    @classmethod
    async def open(cls, url: str) -> RawWebSocket:
        parts = urlsplit(url)
        raw = cls(await trio.open_tcp_stream(parts.hostname, parts.port))
        await raw.stream.send_all(raw.ws.send(Request(host=parts.netloc, target="/")))
        while not any(isinstance(e, AcceptConnection) for e in raw.events):
            await raw._read()
        raw.events.clear()
        return raw

    async def _read(self) -> None:
        data = await self.stream.receive_some(65536)
        self.ws.receive_data(data or None)
        self.events.extend(self.ws.events())

    async def next(self) -> Frame | CloseConnection:
        """The next whole frame from the node, or its Close."""
        while True:
            while self.events:
                event = self.events.pop(0)
                if isinstance(event, CloseConnection):
                    return event
                if isinstance(event, BytesMessage):
                    self._parts.append(event.data)
                    if event.message_finished:
                        data, self._parts = b"".join(self._parts), []
                        return read_frame(data)
            await self._read()

    def frame_bytes(self, frame: Frame) -> bytes:
        return self.ws.send(BytesMessage(data=write_frame(frame)))

    async def request(self, frame: Frame) -> Frame:
        await self.stream.send_all(self.frame_bytes(frame))
        answer = await self.next()
        assert not isinstance(answer, CloseConnection), answer
        return answer


async def test_five_sends_and_a_close_in_one_write_get_five_answers(node1) -> None:
    url = node1.url("n1")
    with trio.fail_after(20):
        alice = device_homed_at(node1.ring, "n1")
        bob = device_homed_at(node1.ring, "n1")
        await publish(url, alice)
        await publish(url, bob)
        raw = await RawWebSocket.open(url)
        ch = await raw.request(Hello(id=1, versions=list(SUPPORTED_VERSIONS), role="client"))
        assert isinstance(ch, Challenge)
        sig = alice.sign(auth_message(ch.nonce, ch.node_id, alice.user_id, 0))
        assert isinstance(await raw.request(Auth(id=2, user_id=alice.user_id, device_id=0,
                                                 signature=sig)), AuthOk)
        sends = [Send(id=10 + i, msg_id=os.urandom(16), recipients=[bob.recipient(b"%d" % i)])
                 for i in range(5)]
        burst = b"".join(raw.frame_bytes(s) for s in sends) + raw.ws.send(CloseConnection(1000))
        await raw.stream.send_all(burst)  # five sends and a Close in one TCP write
        answers = []
        while True:
            event = await raw.next()
            if isinstance(event, CloseConnection):
                break
            answers.append(event)
        await raw.stream.aclose()
    assert answers == [Sent(id=s.id, status="stored") for s in sends]
    assert await node1.storages["n1"].queue_length(bob.user_id, 0) == 5


async def test_closes_racing_pushes_and_answers_log_no_error(node1, caplog) -> None:
    caplog.set_level(logging.DEBUG, logger="wa_relay")
    url = node1.url("n1")
    with trio.fail_after(30):
        alice = device_homed_at(node1.ring, "n1")
        bob = device_homed_at(node1.ring, "n1")
        await publish(url, alice)
        await publish(url, bob)
        async with session(url, alice) as a:
            for i in range(300):  # a backlog for bob: pushes in flight when he leaves
                await a.send(Send(id=100 + i, msg_id=os.urandom(16),
                                  recipients=[bob.recipient(os.urandom(2000))]))
            for _ in range(300):
                assert isinstance(await a.recv(), Sent)
        for round_ in range(20):
            async with session(url, bob) as b, session(url, alice) as a:
                await b.send(Sync(id=2))
                for i in range(5):  # answers still to come when alice goes
                    await a.send(Send(id=10 + i, msg_id=os.urandom(16),
                                      recipients=[bob.recipient(b"x")]))
                if round_ % 2:  # abrupt: TCP gone, no closing handshake
                    await b.ws._stream.aclose()
                    await a.ws._stream.aclose()
        async with connect(url) as c:  # the node still serves
            assert isinstance(await c.hello(), Challenge)
    bad = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert bad == [], [r.getMessage() for r in bad]
    assert not [r for r in caplog.records if "unexpected error" in r.getMessage()]
