"""An upgrade request with a body that turns out malformed (``Transfer-Encoding:
chunked``, then a bad chunk a moment later). trio-websocket's reader answered it
400 while the node's handler was accepting the same request (101); h11 refused the
second answer (``h11.LocalProtocolError: ... without a pending proposal``), and
then wsproto the Close that trio-websocket's cleanup sends in that half-switched
state: both went up through trio-websocket's server and stopped the node, about
every other try. The node now answers one of the two and drops the connection,
with nothing logged as unexpected."""

from __future__ import annotations

import logging

import trio
from rawws import REQUEST, open_raw, port_of, read_response
from relay_harness import Cluster, connect, make_configs

ATTEMPTS = 100
CHUNKED = REQUEST.replace(b"\r\n\r\n", b"\r\nTransfer-Encoding: chunked\r\n\r\n")


async def test_a_bad_chunk_after_the_upgrade_request_does_not_stop_the_node(nursery,
                                                                            caplog) -> None:
    caplog.set_level(logging.ERROR)
    cluster = Cluster(nursery, make_configs(1))
    await cluster.start("n1")
    url = cluster.url("n1")
    answers: dict[bytes, int] = {}
    with trio.fail_after(60):
        for _ in range(ATTEMPTS):
            stream = await open_raw(port_of(url), False)
            await stream.send_all(CHUNKED)
            await trio.lowlevel.checkpoint()  # the node reads the request first, mostly
            try:
                await stream.send_all(b"zz\r\n")
                head, _ = await read_response(stream)
                status = head[9:12]
            except (trio.BrokenResourceError, AssertionError):
                status = b"reset"  # dropped before an answer
            answers[status] = answers.get(status, 0) + 1
            await trio.aclose_forcefully(stream)
        async with connect(url) as honest:
            assert len((await honest.hello()).nonce) >= 16
    assert set(answers) <= {b"400", b"101", b"reset"}, answers
    assert [r.getMessage() for r in caplog.records] == []
