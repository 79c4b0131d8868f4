"""Ceiling: raw trio-websocket on one loopback connection, with the relay's
transport settings (64 KiB receive buffer), no msgpack, no relay logic.

* one-way: the client sends ``n`` binary frames back to back; the server reads
  them all and answers one frame at the end, so the figure includes the full
  receive path;
* round trip: the client sends one frame and waits for the server's echo before
  the next: the most request/answer exchanges one connection can do when each
  request waits for its answer (what a node that answers one device's requests
  in order allows).
"""

from __future__ import annotations

import time
from functools import partial

import trio
from trio_websocket import WebSocketRequest, open_websocket_url, serve_websocket

RECEIVE_BUFFER = 64 * 1024


async def _serve_and_connect(handler, client_body) -> float:
    """Run a server with ``handler`` on an ephemeral port and ``client_body(ws)`` against it."""
    async with trio.open_nursery() as nursery:
        server = await nursery.start(partial(
            serve_websocket, handler, "127.0.0.1", 0, None, receive_buffer_size=RECEIVE_BUFFER,
        ))
        async with open_websocket_url(
            f"ws://127.0.0.1:{server.port}", receive_buffer_size=RECEIVE_BUFFER
        ) as ws:
            result = await client_body(ws)
        nursery.cancel_scope.cancel()
    return result


async def one_way(n: int, size: int) -> float:
    """Frames/s for ``n`` frames of ``size`` bytes sent back to back on one connection."""
    async def handler(request: WebSocketRequest) -> None:
        ws = await request.accept()
        for _ in range(n):
            await ws.get_message()
        await ws.send_message(b"done")

    async def client(ws) -> float:
        payload = b"x" * size
        start = time.perf_counter()
        for _ in range(n):
            await ws.send_message(payload)
        await ws.get_message()
        return n / (time.perf_counter() - start)

    return await _serve_and_connect(handler, client)


async def round_trips(n: int, size: int) -> float:
    """Request/answer exchanges per second, one at a time, ``size``-byte frames."""
    async def handler(request: WebSocketRequest) -> None:
        ws = await request.accept()
        for _ in range(n):
            await ws.send_message(await ws.get_message())

    async def client(ws) -> float:
        payload = b"x" * size
        start = time.perf_counter()
        for _ in range(n):
            await ws.send_message(payload)
            await ws.get_message()
        return n / (time.perf_counter() - start)

    return await _serve_and_connect(handler, client)


async def run_figures(n: int = 40_000, size: int = 200) -> dict[str, float]:
    """``{"frames_per_s", "round_trips_per_s"}`` for ``size``-byte frames."""
    return {
        "frames_per_s": await one_way(n, size),
        "round_trips_per_s": await round_trips(max(n // 8, 100), size),
    }


if __name__ == "__main__":
    print(trio.run(run_figures))
