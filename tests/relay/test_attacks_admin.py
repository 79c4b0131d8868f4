"""Attacks on the admin HTTP listener (/metrics, /health, /ready). It served 16
connections at once; every further accepted connection waited for a slot with no
timeout. So 16 idle connections stalled every health check for 10 s (the
container's health check gives up after 4 s: a node marked unhealthy by anyone who
can reach its admin port), and idle connections without end each held a file
descriptor until the process ran out (EMFILE: no more client connections). Now a
new connection past the cap closes the oldest one that has not sent its request.
Malformed, huge or reset requests were already dropped; they are checked too."""

from __future__ import annotations

import dataclasses
import os

import trio
from rawws import reset

from relay.admin.http import MAX_CLIENTS
from relay.admin.status import http_get
from relay.testing import LocalCluster, free_ports, node_configs

IDLE = 200


async def _admin_node(nursery) -> tuple[str, int]:
    (config,) = node_configs(1)
    config = dataclasses.replace(config, admin_port=free_ports(1)[0])
    await LocalCluster(nursery, [config]).start("n1")
    return config.admin_url, config.admin_port


async def _ready_within(url: str, seconds: float) -> None:
    with trio.fail_after(seconds):
        status, body = await http_get(url + "/ready", 10)
    assert status == 200 and b'"ready": true' in body, (status, body)


async def test_idle_admin_connections_neither_stall_probes_nor_pile_up(nursery) -> None:
    url, port = await _admin_node(nursery)
    with trio.fail_after(30):
        idle = [await trio.open_tcp_stream("127.0.0.1", port) for _ in range(MAX_CLIENTS)]
        await _ready_within(url, 2)  # was: 10 s, once the idle ones timed out
        idle += [await trio.open_tcp_stream("127.0.0.1", port) for _ in range(IDLE)]
        closed = 0

        async def watch(stream: trio.SocketStream) -> None:
            nonlocal closed
            try:
                assert await stream.receive_some(1) == b""
            except trio.BrokenResourceError:
                pass
            closed += 1

        async with trio.open_nursery() as watching:
            for stream in idle:
                watching.start_soon(watch, stream)
            deadline = trio.current_time() + 5  # well before REQUEST_TIMEOUT (10 s)
            while closed < len(idle) - MAX_CLIENTS:  # the node closes the surplus itself
                assert trio.current_time() < deadline, closed
                await trio.sleep(0.02)
            await _ready_within(url, 2)
            watching.cancel_scope.cancel()
        for stream in idle:
            await stream.aclose()


async def test_malformed_and_reset_admin_requests_are_dropped(nursery) -> None:
    url, port = await _admin_node(nursery)
    bad = [os.urandom(2000), b"\0" * 100, b"GET /" + b"a" * 200_000 + b" HTTP/1.1\r\n\r\n",
           b"GET /metrics HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
           b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 100000000\r\n\r\n" + bytes(65536),
           b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n" * 20, b"GET /metrics HTTP/1.1\r\nHo"]
    with trio.fail_after(30):
        for data in bad:
            for rst in (False, True):
                stream = await trio.open_tcp_stream("127.0.0.1", port)
                try:
                    await stream.send_all(data)
                except trio.BrokenResourceError:
                    pass  # the node dropped it before reading it all
                if rst:
                    reset(stream)
                else:
                    await stream.aclose()
            await _ready_within(url, 2)
