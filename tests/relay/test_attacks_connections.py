"""Connections of authenticated devices from one address. Accounts are free (one per
20 s per address after a burst of 50) and each may list 8 devices, each with its own
connection; nothing counted authenticated connections per address, so one address
could take every ``max_connections`` slot of a node (all other clients then got
HTTP 503). ``max_connections_per_ip`` caps them."""

from __future__ import annotations

from contextlib import AsyncExitStack

import trio
from relay_harness import Cluster, UserDevice, connect, list_of, make_configs, publish_list

from relay.net import ConnectFailed
from relay.protocol.frames import AuthOk

ATTACKER = "127.0.0.2"
MAX_CONNECTIONS = 24
PER_IP = 8


async def test_one_address_cannot_take_every_connection_slot(nursery) -> None:
    cluster = Cluster(nursery, make_configs(1, max_connections=MAX_CONNECTIONS,
                                            max_pending=8, max_connections_per_ip=PER_IP))
    await cluster.start_all()
    url = cluster.url("n1")
    with trio.fail_after(30):
        # three free accounts of 8 devices each: 24 devices
        devices = []
        for _ in range(3):
            primary = UserDevice()
            mine = [primary, *(primary.companion(i) for i in range(1, 8))]
            assert (await publish_list(url, list_of(mine, 1))).TYPE == "ok"
            devices += mine
        held = 0
        async with AsyncExitStack() as stack:
            for device in devices:
                try:
                    c = await stack.enter_async_context(connect(url, local_address=ATTACKER))
                except ConnectFailed as exc:
                    assert exc.http_status == 503
                    continue
                await c.hello()
                answer = await c.auth(device)
                if isinstance(answer, AuthOk):
                    held += 1
            assert held <= PER_IP, held
            honest = UserDevice()
            await publish_list(url, list_of([honest], 1))
            async with connect(url) as c:  # from 127.0.0.1
                await c.hello()
                assert isinstance(await c.auth(honest), AuthOk)

