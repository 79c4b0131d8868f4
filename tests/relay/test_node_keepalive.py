"""The node notices a dead device link (issue 15, "Dead links noticed"): a connection
that goes silent without a reset is pinged after ``keepalive_interval`` and closed
when no pong comes within ``keepalive_timeout``, which frees the device's slot."""

from __future__ import annotations

import logging
import os

import trio
from relay_harness import Cluster, UserDevice, make_configs, publish, session

from relay.protocol.frames import Ok, Ping, Send, Sent
from tests.netproxy import Proxy


async def _ended_lines(caplog, needle: str) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if "ended after" in r.getMessage() and needle in r.getMessage()]


async def test_a_black_holed_device_connection_is_closed_by_the_node(nursery, caplog) -> None:
    caplog.set_level(logging.INFO, logger="wa_relay.node.n1")
    cluster = Cluster(nursery, make_configs(1, keepalive_interval=0.3, keepalive_timeout=0.3))
    await cluster.start("n1")
    port = int(cluster.url("n1").rsplit(":", 1)[1])
    proxy = Proxy(port)
    await nursery.start(proxy.serve)
    alice, bob = UserDevice(), UserDevice()
    with trio.fail_after(15):
        await publish(cluster.url("n1"), alice)
        await publish(cluster.url("n1"), bob)
        async with session(proxy.url, bob) as b:
            # an idle but live connection survives several keepalive rounds
            # (time passing is what is tested here, not an event being waited for)
            await trio.sleep(1.0)
            assert await b.request(Ping(id=5)) == Ok(id=5)
            assert await _ended_lines(caplog, "keepalive") == []
            proxy.blackhole()
            deadline = trio.current_time() + 5
            while not await _ended_lines(caplog, "keepalive"):
                assert trio.current_time() < deadline, "the node never noticed the dead link"
                await trio.sleep(0.05)
            (line,) = await _ended_lines(caplog, "keepalive")
            assert f"device {bob.user_id[:8]}/0" in line
        # messages sent meanwhile wait in the queue; the device is not held as connected
        async with session(cluster.url("n1"), alice) as a:
            sent = await a.request(Send(id=3, msg_id=os.urandom(16), recipients=[bob.recipient()]))
            assert sent == Sent(id=3, status="stored")
