"""The per-connection boundary of the node's WebSocket server
(:func:`relay.net.wsio.serve_gated_websocket`): trio-websocket's ``WebSocketServer``
has none, so any exception out of one connection's tasks (its reader, the
handler's accept or reject) ended the server's nursery and stopped the node (see
test_attacks_reset_upgrade.py, test_attacks_closing.py). The server now logs such
an error with the connection's address and goes on serving."""

from __future__ import annotations

import logging
from functools import partial

import trio
from rawws import REQUEST, open_raw, wait_ended
from trio_websocket import WebSocketRequest, open_websocket_url

from relay.net.wsio import serve_gated_websocket


async def test_an_error_out_of_one_connection_does_not_stop_the_server(nursery, caplog) -> None:
    served: list[str] = []

    async def handler(request: WebSocketRequest) -> None:
        if request.path == "/boom":
            raise RuntimeError("a bug in one connection")
        ws = await request.accept()
        served.append(request.path)
        await ws.send_message(await ws.get_message())

    log = logging.getLogger("test.boundary")
    server = await nursery.start(partial(
        serve_gated_websocket, handler, "127.0.0.1", 0, None, message_queue_size=4,
        max_message_size=65536, receive_buffer_size=65536, connect_timeout=5,
        disconnect_timeout=1, log=log))
    with trio.fail_after(10):
        for _ in range(3):
            stream = await open_raw(server.port, False)
            await stream.send_all(REQUEST.replace(b"GET / ", b"GET /boom "))
            await wait_ended(stream)  # dropped
            await trio.aclose_forcefully(stream)
        async with open_websocket_url(f"ws://127.0.0.1:{server.port}/ok") as ws:
            await ws.send_message(b"still serving")
            assert await ws.get_message() == b"still serving"
    assert served == ["/ok"]
    errors = [r for r in caplog.records if r.name == "test.boundary"]
    assert len(errors) == 3, errors
    assert all("connection from 127.0.0.1: unexpected error" in r.getMessage() for r in errors)
    traces = [logging.Formatter().formatException(r.exc_info) for r in errors if r.exc_info]
    assert len(traces) == 3 and all("RuntimeError: a bug in one connection" in t for t in traces)
