"""Frames that arrive after the node sent its Close. A text frame makes the node close
with 1003; a Ping (or an oversized frame) sent after that Close made trio-websocket's
reader task answer with a Pong (a 1009 Close), which wsproto refuses once our Close
is out (``LocalProtocolError: ... cannot be sent in state LOCAL_CLOSING``): the
error went up through trio-websocket's server, which has no per-connection
boundary, and stopped the node. Any client could do it in two frames. The node
must drop such a connection and keep serving everyone else."""

from __future__ import annotations

import pytest
import trio
from rawws import (
    BINARY,
    CLOSE,
    PING,
    TEXT,
    client_frame,
    port_of,
    read_until_close,
    upgraded,
    wait_ended,
)
from relay_harness import Cluster, connect, make_configs

OVERSIZED = 2 * 1024 * 1024  # above the node's largest WebSocket message (peer frame + slack)


async def _closed_by_the_node(port: int, tls: bool) -> trio.abc.Stream:
    """An upgraded stream whose node has sent its Close (1003, after a text frame)."""
    stream, rest = await upgraded(port, tls)
    await stream.send_all(client_frame(TEXT, b"text"))
    frames = await read_until_close(stream, rest)
    assert frames[-1][0] == CLOSE and frames[-1][1][:2] == (1003).to_bytes(2, "big"), frames
    return stream


async def _still_serves(url: str) -> None:
    async with connect(url) as honest:
        challenge = await honest.hello()
        assert len(challenge.nonce) >= 16


@pytest.mark.parametrize("tls", [False, True], ids=["ws", "wss"])
async def test_a_ping_after_the_nodes_close_does_not_stop_the_node(nursery, tls) -> None:
    cluster = Cluster(nursery, make_configs(1, tls=tls))
    await cluster.start("n1")
    url = cluster.url("n1")
    with trio.fail_after(30):
        for _ in range(3):
            stream = await _closed_by_the_node(port_of(url), tls)
            await stream.send_all(client_frame(PING, b"still there?"))
            await stream.send_all(client_frame(CLOSE, (1000).to_bytes(2, "big")))
            await wait_ended(stream)  # no Pong owed after its Close: our Close ends it
            await trio.aclose_forcefully(stream)
            await _still_serves(url)


async def test_an_oversized_frame_after_the_nodes_close_does_not_stop_the_node(nursery) -> None:
    cluster = Cluster(nursery, make_configs(1))
    await cluster.start("n1")
    url = cluster.url("n1")
    with trio.fail_after(30):
        stream = await _closed_by_the_node(port_of(url), False)
        try:
            await stream.send_all(client_frame(BINARY, bytes(OVERSIZED)))
        except trio.BrokenResourceError:
            pass  # the node may reset before it has read it all
        await wait_ended(stream)
        await trio.aclose_forcefully(stream)
        await _still_serves(url)
