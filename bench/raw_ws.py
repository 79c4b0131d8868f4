"""Ceiling: raw trio-websocket binary frames/s on one loopback connection.

The client sends ``n`` frames of ``size`` bytes; the server counts them and
answers one frame at the end, so the figure includes the full receive path.
Same transport settings as the relay (64 KiB receive buffer).
"""

from __future__ import annotations

import time

import trio
from trio_websocket import open_websocket_url, serve_websocket

from .stats import line


async def run(n: int = 50_000, size: int = 200) -> float:
    """Return frames/s for ``n`` frames of ``size`` bytes."""
    async def handler(request):
        ws = await request.accept()
        got = 0
        while got < n:
            await ws.get_message()
            got += 1
        await ws.send_message(b"done")

    async with trio.open_nursery() as nursery:
        server = await nursery.start(
            lambda task_status: serve_websocket(
                handler, "127.0.0.1", 0, None, receive_buffer_size=65536,
                task_status=task_status,
            )
        )
        port = server.port
        payload = b"x" * size
        async with open_websocket_url(
            f"ws://127.0.0.1:{port}", receive_buffer_size=65536
        ) as ws:
            start = time.perf_counter()
            for _ in range(n):
                await ws.send_message(payload)
            await ws.get_message()
            elapsed = time.perf_counter() - start
        nursery.cancel_scope.cancel()
    rate = n / elapsed
    line(f"raw trio-websocket, {size} B frames, 1 conn", f"{rate:10,.0f} frames/s")
    return rate


if __name__ == "__main__":
    trio.run(run)
