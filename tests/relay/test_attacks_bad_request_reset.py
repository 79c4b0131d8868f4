"""A malformed upgrade request followed at once by an RST. trio-websocket's reader
answers a malformed request with 400 outside its own error handling; with the client
gone the write fails, and the ``ConnectionClosed`` went up through trio-websocket's
server and stopped the node, on the first try (plain and TLS). The node must drop
such a connection quietly (nothing logged as unexpected) and keep serving."""

from __future__ import annotations

import logging

import pytest
import trio
from rawws import REQUEST, open_raw, port_of, reset
from relay_harness import Cluster, connect, make_configs

BAD = [REQUEST.replace(b"GET", b"POST"), REQUEST.replace(b"Upgrade: websocket\r\n", b""),
       b"\0" * 64 + b"\r\n\r\n", REQUEST.replace(b"HTTP/1.1", b"HTTP/9")]
ROUNDS = 25


@pytest.mark.parametrize("tls", [False, True], ids=["ws", "wss"])
async def test_malformed_upgrade_requests_reset_at_once_do_not_stop_the_node(nursery, caplog,
                                                                              tls) -> None:
    caplog.set_level(logging.ERROR)
    cluster = Cluster(nursery, make_configs(1, tls=tls))
    await cluster.start("n1")
    url = cluster.url("n1")
    with trio.fail_after(60):
        for _ in range(ROUNDS if not tls else ROUNDS // 5):  # a TLS handshake each
            for bad in BAD:
                stream = await open_raw(port_of(url), tls)
                await stream.send_all(bad)
                reset(stream)
        async with connect(url) as honest:
            assert len((await honest.hello()).nonce) >= 16
    assert [r.getMessage() for r in caplog.records] == []
