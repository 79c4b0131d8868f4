"""Client connections when the home node goes away: a clear ``ConnectionLost``, no
leaked socket (``ResourceWarning``)."""

from __future__ import annotations

import gc
import re
import warnings
from contextlib import ExitStack
from functools import partial

import trio
from cli_cluster import new_account, run_cluster

from cli.client import open_client
from cli.errors import ConnectionFailed, ConnectionLost
from cli.events import BacklogDone

DEADLINE = 30


async def _receive_until_lost(tmp_path) -> tuple[str, str]:
    """Connect, start receiving, stop the home node; returns the texts of the
    ``ConnectionLost`` of the receive stream and of a request made afterwards."""
    with ExitStack() as stack:
        async with run_cluster(1) as cluster:
            state = new_account(tmp_path, "alice", cluster.urls["n1"], stack)
            async with open_client(state) as client:
                receiver = client.receive()
                assert isinstance(await receiver.__anext__(), BacklogDone)
                cluster.stop("n1")
                try:
                    async for _ in receiver:
                        pass
                except ConnectionLost as exc:
                    streamed = str(exc)
                try:
                    await client.get_devices(state.user_id)
                except ConnectionLost as exc:
                    return streamed, str(exc)
    raise AssertionError("the client did not notice that its node stopped")


async def test_home_node_dies_while_connected(tmp_path):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        with trio.fail_after(DEADLINE):
            streamed, requested = await _receive_until_lost(tmp_path)
        gc.collect()  # a leaked socket warns when it is collected
    assert [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)] == []
    assert re.fullmatch(r"connection to ws://127\.0\.0\.1:\d+ (lost: the node went away "
                        r"without closing it \(1006 abnormal closure\)|closed \(1\d\d\d .+\))",
                        streamed), streamed
    assert requested == streamed


async def _connect_to_silent_listener(tmp_path) -> str:
    """A TCP listener that never answers the WebSocket upgrade: the connect times out."""
    async def silent(stream: trio.SocketStream) -> None:
        async with stream:
            await trio.sleep_forever()

    with ExitStack() as stack:
        async with trio.open_nursery() as nursery:
            (listener,) = await nursery.start(
                partial(trio.serve_tcp, silent, 0, host="127.0.0.1"))
            port = listener.socket.getsockname()[1]
            state = new_account(tmp_path, "alice", f"ws://127.0.0.1:{port}", stack)
            try:
                async with open_client(state, connect_timeout=0.3):
                    pass
            except ConnectionFailed as exc:
                return str(exc)
            finally:
                nursery.cancel_scope.cancel()
    raise AssertionError("connected to a listener that never answered")


async def test_handshake_timeout_closes_the_socket(tmp_path):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        with trio.fail_after(DEADLINE):
            message = await _connect_to_silent_listener(tmp_path)
        gc.collect()
    assert [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)] == []
    assert re.fullmatch(r"cannot connect to ws://127\.0\.0\.1:\d+: "
                        r"no WebSocket answer within 0\.3s", message), message


def test_a_refusing_node_is_reported_plainly():
    from trio_websocket import ConnectionRejected

    from relay.net import failed_text as _failed_text

    busy = _failed_text("ws://127.0.0.1:1", ConnectionRejected(503, [], b"busy"), 5)
    assert busy == ("cannot connect to ws://127.0.0.1:1: the node is busy (HTTP 503); "
                    "retry in a few seconds")
    other = _failed_text("ws://127.0.0.1:1", ConnectionRejected(403, [], b""), 5)
    assert other.endswith("the node refused the connection (HTTP 403)")
