"""The load generator's minimal WebSocket client (:mod:`bench.lean_ws`): its frames
are what the node's own parser reads, it reads the node's frames, answers a Ping and
stops at a Close; and it talks to a real node (``wa-relay serve`` on 127.0.0.1)."""

from __future__ import annotations

import os
from collections import deque

import pytest
import trio
import trio.testing

from bench import relay_wire as wire
from bench.lean_ws import LeanClosed, LeanWebSocket, mask_frame
from bench.relay import NodeProcesses
from relay.net.wsio import frame_binary, take_binary_frames


@pytest.mark.parametrize("size", [0, 1, 125, 126, 4096, 65535])
def test_masked_frames_are_what_the_node_reads(size):
    payload = os.urandom(size)
    frame = mask_frame(0x2, payload)
    out: deque = deque()
    assert take_binary_frames(frame + frame, out) == 2 * len(frame)
    assert [m.data for m in out] == [payload, payload]
    assert frame[1] & 0x80  # masked, as RFC 6455 5.3 requires of a client


async def test_reads_node_frames_answers_ping_and_stops_at_close():
    client, node = trio.testing.memory_stream_pair()
    big = os.urandom(70_000)  # a 64-bit length
    ping = bytes((0x89, 3)) + b"abc"
    close = bytes((0x88, 2)) + (1000).to_bytes(2, "big")
    ws = LeanWebSocket(client, frame_binary([b"first"]), 1 << 20)
    await node.send_all(ping + frame_binary([b"second", big]) + close)
    assert await ws.get_message() == b"first"
    assert await ws.get_message() == b"second"
    assert await ws.get_message() == big
    with pytest.raises(LeanClosed):
        await ws.get_message()
    pong = await node.receive_some(1024)
    out: deque = deque()
    assert pong[0] == 0x8A and pong[1] == 0x80 | 3  # a masked Pong with the Ping's data
    key = pong[2:6]
    assert bytes(b ^ key[i % 4] for i, b in enumerate(pong[6:9])) == b"abc"
    assert take_binary_frames(pong, out) == 0  # not a binary frame: the node's slow path


async def test_refuses_frames_the_node_never_sends():
    client, node = trio.testing.memory_stream_pair()
    ws = LeanWebSocket(client, b"", 1 << 20)
    await node.send_all(bytes((0x81, 2)) + b"hi")  # text
    with pytest.raises(ValueError, match="opcode 1"):
        await ws.get_message()


async def test_a_session_with_a_real_node(tmp_path):
    nodes = NodeProcesses(tmp_path / "c", 1)
    await trio.to_thread.run_sync(nodes.start)
    try:
        assert nodes.cluster is not None
        url = nodes.cluster.urls["n1"][0]
        assert url.startswith("ws://")
        account = wire.Account()
        with trio.fail_after(30):
            await wire.publish(url, account)
            async with wire.session(url, account, "lean") as ws:
                assert isinstance(ws, LeanWebSocket)
                await ws.send_message(wire.ping_frame(wire.FIRST_REQUEST_ID))
                events = wire.events(await ws.get_message())
                assert [wire.is_ping_answer(e) for e in events] == [True]
    finally:
        await trio.to_thread.run_sync(nodes.stop)
