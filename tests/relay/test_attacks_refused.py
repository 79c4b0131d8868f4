"""Connections the node refuses at the HTTP upgrade must not keep their place.

* **503, then silence.** Over ``max_connections`` the node answers 503 and its handler
  returns; trio-websocket's ``aclose`` then has nothing to do (the connection counts
  as closed) and its reader task went on reading whatever the client sent, for as
  long as the client kept the socket open: refused clients held a file descriptor
  each without any bound, past every cap meant to protect them. The node now closes
  a refused connection ``disconnect_timeout`` (5 s) after its answer at the latest.
* **400.** A malformed upgrade request is answered 400 and its stream closed by the
  reader, but the connection stayed counted as opening (per address and in all)
  until the connect timeout (10 s): now its place is given back at once.
"""

from __future__ import annotations

import trio
from rawws import REQUEST, open_raw, port_of, read_response, wait_ended
from relay_harness import Cluster, connect, make_configs

from relay.protocol.frames import Ok, Ping

REFUSED = 20
DISCONNECT_TIMEOUT = 5.0  # relay.node.serve_node's disconnect_timeout


async def test_refused_clients_that_stay_silent_lose_their_sockets(nursery) -> None:
    cluster = Cluster(nursery, make_configs(1, max_connections=1))
    await cluster.start("n1")
    url = cluster.url("n1")
    with trio.fail_after(DISCONNECT_TIMEOUT + 10):
        async with connect(url) as holder:  # takes the one place
            await holder.hello()
            streams = []
            for _ in range(REFUSED):
                stream = await open_raw(port_of(url), False)
                await stream.send_all(REQUEST)
                head, _ = await read_response(stream)
                assert head.startswith(b"HTTP/1.1 503 "), head
                streams.append(stream)
            refused_at = trio.current_time()
            async with trio.open_nursery() as watching:
                for stream in streams:  # they send nothing more and never close
                    watching.start_soon(wait_ended, stream)
            waited = trio.current_time() - refused_at
            assert waited < DISCONNECT_TIMEOUT + 3, waited
            for stream in streams:
                await trio.aclose_forcefully(stream)
            assert await holder.request(Ping(id=9)) == Ok(id=9)  # the admitted one is served


async def test_a_bad_upgrade_request_gives_its_opening_place_back_at_once(nursery) -> None:
    nodes = []
    cluster = Cluster(nursery, make_configs(1))
    await cluster.start("n1", on_node=nodes.append)
    (node,) = nodes
    url = cluster.url("n1")
    with trio.fail_after(10):
        for bad in (REQUEST.replace(b"GET", b"POST"), b"\0" * 64,
                    REQUEST.replace(b"Upgrade: websocket\r\n", b"")):
            stream = await open_raw(port_of(url), False)
            await stream.send_all(bad)
            head, _ = await read_response(stream)
            assert head.startswith(b"HTTP/1.1 400 "), head
            await wait_ended(stream)
            await trio.aclose_forcefully(stream)
        deadline = trio.current_time() + 2  # well before the connect timeout (10 s)
        while node.opening.pending("127.0.0.1"):
            assert trio.current_time() < deadline, node.opening.pending("127.0.0.1")
            await trio.sleep(0.02)
        async with connect(url) as honest:
            assert len((await honest.hello()).nonce) >= 16
