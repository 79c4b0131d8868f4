"""A JSON-RPC 2.0 client of ``wa-cli daemon`` (docs/jsonrpc.md) on Trio, for the
``daemon_kill`` fault kind: one connection to ``HOME/daemon.sock``, requests
answered in order, ``receive`` notifications handed to a callback as they arrive.

A connection the daemon closes (it was killed) ends every waiting call with
:class:`RpcGone`; nothing is retried here (the fault kind decides).
"""

from __future__ import annotations

import json
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio

MAX_LINE = 1 << 22  # bytes of one line from the daemon (a notification with a long text)


class RpcGone(Exception):
    """The connection to the daemon ended before the answer came."""


class RpcFailed(Exception):
    """An error answer: ``code``, ``message``, ``data`` as the daemon sent them."""

    def __init__(self, error: dict) -> None:
        super().__init__(f"{error.get('code')}: {error.get('message')}")
        self.code = error.get("code")
        self.message = str(error.get("message", ""))
        self.data = error.get("data")


class RpcClient:
    """One JSON-RPC connection to a daemon; use :func:`open_rpc`.

    Args:
        stream: the connected Unix socket stream.
        on_notify: called with ``(method, params)`` of every notification, in the
            order the daemon wrote them.
    """

    def __init__(self, stream: trio.SocketStream,
                 on_notify: Callable[[str, dict], None] | None = None) -> None:
        self._stream = stream
        self._on_notify = on_notify
        self._next_id = 1
        self._waiting: dict[int, trio.MemorySendChannel] = {}
        self._write_lock = trio.Lock()
        self.closed = trio.Event()

    async def call(self, method: str, params: dict | None = None) -> Any:
        """Send one request and wait for its answer.

        Returns:
            The ``result`` member.

        Raises:
            RpcFailed: an error answer.
            RpcGone: the connection ended first (also if it had ended before).
        """
        if self.closed.is_set():
            raise RpcGone("the daemon connection is closed")
        rid, self._next_id = self._next_id, self._next_id + 1
        send, recv = trio.open_memory_channel[dict](1)
        self._waiting[rid] = send
        line = json.dumps({"jsonrpc": "2.0", "id": rid, "method": method,
                           "params": params or {}}).encode() + b"\n"
        try:
            async with self._write_lock:
                try:
                    await self._stream.send_all(line)
                except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                    raise RpcGone(f"writing to the daemon failed: {exc}") from exc
            try:
                answer = await recv.receive()
            except trio.EndOfChannel:
                raise RpcGone("the daemon closed the connection before answering") from None
        finally:
            self._waiting.pop(rid, None)
        if "error" in answer:
            raise RpcFailed(answer["error"] or {})
        return answer.get("result")

    async def read_loop(self) -> None:
        """Read lines until the daemon closes; answers go to their callers,
        notifications to ``on_notify``. Ends every waiting call at the end."""
        buf = bytearray()
        try:
            while True:
                try:
                    chunk = await self._stream.receive_some(65536)
                except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                    return
                if not chunk:
                    return
                buf += chunk
                while (nl := buf.find(b"\n")) >= 0:
                    raw, buf = bytes(buf[:nl]), buf[nl + 1:]
                    self._dispatch(raw)
                if len(buf) > MAX_LINE:
                    return
        finally:
            self.closed.set()
            for send in list(self._waiting.values()):
                send.close()

    def _dispatch(self, raw: bytes) -> None:
        try:
            obj = json.loads(raw)
        except ValueError:
            return
        if not isinstance(obj, dict):
            return
        if "method" in obj and "id" not in obj:
            if self._on_notify is not None:
                self._on_notify(obj["method"], obj.get("params") or {})
            return
        send = self._waiting.get(obj.get("id"))
        if send is not None:
            send.send_nowait(obj)

    async def aclose(self) -> None:
        """Close the connection."""
        await self._stream.aclose()


async def open_rpc(path: Path, nursery: trio.Nursery,
                   on_notify: Callable[[str, dict], None] | None = None) -> RpcClient:
    """Connect to the daemon socket ``path``; its reader runs in ``nursery``.

    Raises:
        OSError: nothing listens there.
    """
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        await sock.connect(str(path))
    except BaseException:
        sock.close()
        raise
    client = RpcClient(trio.SocketStream(sock), on_notify)
    nursery.start_soon(client.read_loop)
    return client
