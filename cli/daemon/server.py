"""``wa-cli daemon``'s listeners: JSON-RPC (:mod:`cli.daemon.jsonrpc`) on a Unix socket
in the device home (``HOME/daemon.sock``, mode 0600, in the 0700 home) and optionally
on TCP on loopback, over one :class:`~cli.daemon.core.Device`.

Other ``wa-cli`` commands of the same home find the socket (:mod:`cli.daemon.remote`)
and go through it.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable, Iterator
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from pathlib import Path

import trio

from cli.client import Client
from cli.daemon import (
    methods_files,  # noqa: F401 (registers the file methods)
    methods_more,  # noqa: F401 (registers the commands' methods)
)
from cli.daemon.core import Device
from cli.daemon.jsonrpc import FINISH_LIMIT, Peer
from cli.daemon.methods import bind
from cli.daemon.remote import SOCKET_FILE, socket_path
from cli.session.state import State

__all__ = ["SOCKET_FILE", "Listening", "serve_daemon", "socket_path"]

log = logging.getLogger(__name__)

MAX_SOCKET_PATH = 104  # bytes: sun_path is 108 on Linux, 104 on macOS


@dataclass(frozen=True)
class Listening:
    """Where a started daemon listens: ``socket`` (path) and ``tcp`` (``(host, port)`` or None)."""

    socket: Path
    tcp: tuple[str, int] | None


async def _unix_listener(path: Path) -> trio.SocketListener:
    if len(os.fsencode(path)) >= MAX_SOCKET_PATH:
        raise OSError(f"the socket path {path} is too long for a Unix socket; use a shorter --home")
    await trio.Path(path).unlink(missing_ok=True)  # stale: the caller holds the home's lock
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        await sock.bind(os.fspath(path))
        os.chmod(path, 0o600)
        sock.listen(64)
    except BaseException:
        sock.close()
        raise
    return trio.SocketListener(sock)


async def serve_daemon(
    state: State, connect: Callable[[State], AbstractAsyncContextManager[Client]],
    delays: Callable[[], Iterator[float]], *, tcp_port: int | None = None,
    finish_limit: float = FINISH_LIMIT, stop_now: trio.Event | None = None,
    task_status=trio.TASK_STATUS_IGNORED,  # noqa: ANN001
) -> None:
    """Serve the device of ``state`` until cancelled; the socket file is removed on exit.
    Once cancelled, no new request is read; those read before are answered first
    (each within ``finish_limit`` seconds), over the device's connection, which is
    closed after them.

    Args:
        state: the open state (exclusive lock held by the caller for the whole run).
        connect: opens a client of ``state`` (network settings of the command).
        delays: reconnection delays (see :class:`~cli.daemon.core.Device`).
        tcp_port: also listen on ``127.0.0.1:tcp_port`` (0: any free port). Anyone on
            this machine can connect to it: for single-user machines and containers.
        finish_limit: seconds a request read before the stop (cancellation) began may
            still run after it (see :class:`~cli.daemon.jsonrpc.Peer`).
        stop_now: once set (after the cancellation: a second Ctrl-C or SIGTERM), the
            requests still running are cut off at once and the device's connection
            closes: the daemon ends without waiting for ``finish_limit``.

    ``task_status.started(Listening(...))`` once the listeners are bound (the
    connection to the home node is made in the background).

    Raises:
        OSError: a listener could not be bound.
    """
    path = socket_path(state.home)
    device = Device(state, connect, delays)
    methods = bind(device)
    listeners: list[trio.SocketListener] = [await _unix_listener(path)]
    try:
        tcp = None
        if tcp_port is not None:
            tcp_listeners = await trio.open_tcp_listeners(tcp_port, host="127.0.0.1")
            listeners += tcp_listeners
            tcp = tcp_listeners[0].socket.getsockname()[:2]
        counter = iter(range(1, 1 << 62))
        peers: set[Peer] = set()

        async def handle(stream: trio.SocketStream) -> None:
            peer = Peer(stream, methods, f"rpc client {next(counter)}",
                        finish_limit=finish_limit)
            peers.add(peer)
            try:
                await peer.serve()
            except Exception:  # the per-connection boundary: log, close, keep serving
                log.exception("%s: closed after an unexpected error", peer.name)
            finally:
                peers.discard(peer)
                for sid in peer.subscriptions:
                    device.unsubscribe(sid)
                await stream.aclose()

        # The device's connection outlives the stop until the requests read before it
        # are answered (each at most finish_limit later, jsonrpc.Peer): an upload or a
        # send under way finishes over it. Then the device stops too.
        device_scope = trio.CancelScope(shield=True)

        async def run_device(task_status=trio.TASK_STATUS_IGNORED) -> None:  # noqa: ANN001
            with device_scope:
                await device.serve(task_status=task_status)

        # A second signal (stop_now) must end the daemon even while requests finish:
        # waited for under a shield, since the first signal cancelled everything else.
        forcing = trio.CancelScope(shield=True)

        async def force_on_stop_now() -> None:
            with forcing:
                if stop_now is None:
                    await trio.sleep_forever()
                await stop_now.wait()
                log.info("stopping now: what %d connections still run is cut off", len(peers))
                for peer in list(peers):
                    peer.cut_now()
                device_scope.cancel()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(force_on_stop_now)
            try:
                await nursery.start(run_device)
                async with trio.open_nursery() as rpc:
                    for listener in listeners:
                        rpc.start_soon(trio.serve_listeners, handle, [listener])
                    task_status.started(Listening(path, tcp))
            finally:
                device_scope.cancel()
                forcing.cancel()
    finally:
        with trio.CancelScope(shield=True):
            for listener in listeners:
                await listener.aclose()
            await trio.Path(path).unlink(missing_ok=True)
