"""The node notices a dead device link (issue 15, "Dead links noticed"): a connection
that goes silent without a reset is pinged after ``keepalive_interval`` and closed
when no pong comes within ``keepalive_timeout``, which frees the device's slot."""

from __future__ import annotations

import dataclasses
import logging
import os

import trio
from relay_harness import Cluster, UserDevice, make_configs, publish, session

from relay.protocol.frames import Ok, Ping, Send, Sent
from relay.testing import free_ports
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


async def test_outgoing_peer_links_use_the_configured_keepalive(nursery, caplog) -> None:
    """Issue 15, "Dead links noticed ... configurable": a node's own peer link to a
    peer that went silent (a black-holing proxy) is given up after the node's
    ``keepalive_interval`` + ``keepalive_timeout`` (0.3 + 0.3 s here; the defaults
    are 20 + 10 s), and comes back when the path heals."""
    caplog.set_level(logging.INFO, logger="wa_relay.node.n2")
    configs = make_configs(2, keepalive_interval=0.3, keepalive_timeout=0.3)
    # n1 listens elsewhere; the proxy takes its address in the (shared) cluster file
    (hidden,) = free_ports(1)
    proxy = Proxy(hidden, port=configs[0].port)
    configs[0] = dataclasses.replace(configs[0], port=hidden)
    await nursery.start(proxy.serve)
    cluster = Cluster(nursery, configs)
    await cluster.start_all()

    def lines(prefix: str) -> list[str]:
        return [r.getMessage() for r in caplog.records if r.getMessage().startswith(prefix)]

    async def until(prefix: str, count: int) -> None:
        while len(lines(prefix)) < count:  # noqa: ASYNC110 - poll, deadline below
            await trio.sleep(0.02)

    with trio.fail_after(15):
        await until("peer link to n1 up", 1)
        proxy.blackhole()
        await until("peer link to n1 down", 1)
        waited = trio.current_time() - proxy.blackholed_at
        assert waited < 0.6 + 1.5, f"noticed after {waited:.2f} s"
        assert "no answer within 0.3s to a keepalive ping" in lines("peer link to n1 down")[0]
        proxy.heal()
        await until("peer link to n1 up", 2)
