"""The per-connection boundary of the node's WebSocket server
(:func:`relay.net.wsserver.serve_gated_websocket`): trio-websocket's
``WebSocketServer`` has none, so any exception out of one connection's tasks (its
reader, the handler's accept or reject) ended the server's nursery and stopped the
node (see test_attacks_reset_upgrade.py, test_attacks_closing.py). The server now
logs such an error with the connection's address, at most once per interval, and
goes on serving."""

from __future__ import annotations

import logging
from functools import partial

import trio
from rawws import REQUEST, open_raw, wait_ended
from trio_websocket import WebSocketRequest, WebSocketServer, open_websocket_url

from relay.net.wsserver import serve_gated_websocket

LOGGER = "test.boundary"
DROPPED = "connection from 127.0.0.1: unexpected error, dropped"


async def _server(nursery, interval: float) -> tuple[WebSocketServer, list[str]]:
    """A server whose handler raises for ``/boom`` and echoes otherwise; the paths served."""
    served: list[str] = []

    async def handler(request: WebSocketRequest) -> None:
        if request.path == "/boom":
            raise RuntimeError("a bug in one connection")
        ws = await request.accept()
        served.append(request.path)
        await ws.send_message(await ws.get_message())

    server = await nursery.start(partial(
        serve_gated_websocket, handler, "127.0.0.1", 0, None, message_queue_size=4,
        max_message_size=65536, receive_buffer_size=65536, connect_timeout=5,
        disconnect_timeout=1, log=logging.getLogger(LOGGER), error_log_interval=interval))
    return server, served


async def _break(server: WebSocketServer, times: int) -> None:
    for _ in range(times):
        stream = await open_raw(server.port, False)
        await stream.send_all(REQUEST.replace(b"GET / ", b"GET /boom "))
        await wait_ended(stream)  # dropped
        await trio.aclose_forcefully(stream)


async def _still_serves(server: WebSocketServer) -> None:
    async with open_websocket_url(f"ws://127.0.0.1:{server.port}/ok") as ws:
        await ws.send_message(b"still serving")
        assert await ws.get_message() == b"still serving"


def _logged(caplog) -> list[str]:
    records = [r for r in caplog.records if r.name == LOGGER]
    for r in records:  # each with the traceback of the error
        assert r.exc_info and "RuntimeError: a bug in one connection" in \
            logging.Formatter().formatException(r.exc_info)
    return [r.getMessage() for r in records]


async def test_an_error_out_of_one_connection_does_not_stop_the_server(nursery, caplog) -> None:
    server, served = await _server(nursery, 0.0)
    with trio.fail_after(10):
        await _break(server, 3)
        await _still_serves(server)
    assert served == ["/ok"]
    assert _logged(caplog) == [DROPPED] * 3


async def test_unexpected_errors_are_logged_at_most_once_per_interval(nursery, caplog) -> None:
    """A client that found a way to trigger an error cannot fill the disk with tracebacks."""
    server, served = await _server(nursery, 1.0)
    with trio.fail_after(10):
        start = trio.current_time()
        await _break(server, 3)
        assert trio.current_time() - start < 1.0  # all three within one interval
        assert _logged(caplog) == [DROPPED]
        await trio.sleep(1.0)
        await _break(server, 1)
        await _still_serves(server)
    assert served == ["/ok"]
    assert _logged(caplog) == [DROPPED, f"{DROPPED} (2 more not logged since the last one)"]
