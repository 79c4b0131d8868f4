"""A node whose port is taken says which address: "cannot run the node: [Errno 98]
Address already in use" named neither the node's port nor its admin port (README
walkthrough, session 6)."""

from __future__ import annotations

import socket

import pytest
import trio

from relay.net.wsserver import serve_gated_websocket


async def _nothing(request) -> None:  # noqa: ANN001
    raise AssertionError("no connection expected")


async def test_a_taken_port_is_named_in_the_error() -> None:
    with socket.socket() as taken:
        taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with trio.fail_after(10), pytest.raises(OSError) as info:
            await serve_gated_websocket(
                _nothing, "127.0.0.1", port, None, message_queue_size=1,
                max_message_size=1024, receive_buffer_size=1024, connect_timeout=1,
                disconnect_timeout=1)
    assert f"cannot listen on 127.0.0.1:{port}" in str(info.value)
    assert info.value.errno == 98  # EADDRINUSE kept for callers that look at it
