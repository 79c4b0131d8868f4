"""An attacker on the network path, as a trio proxy on 127.0.0.1 in front of one node.

Two modes:

* ``terminate=False``: forwards bytes both ways unchanged (TLS passes through it) and
  can :meth:`PathAttacker.inject` bytes of its own into the client -> node stream, as
  an attacker on the path can (a WebSocket frame it built: with TLS, the bytes are
  not a valid TLS record and break the connection instead of being read);
* ``terminate=True``: a man in the middle with a TLS certificate of its own (which
  clients accept: they pin node keys, not certificates). It connects to the node over
  TLS itself and relays the plaintext, so the node's challenge reaches the client
  unchanged, made for the proxy's channel to the node.

Usage::

    async with trio.open_nursery() as nursery:
        mitm = PathAttacker(node_port, terminate=True, cert_dir=tmp_path)
        await nursery.start(mitm.serve)
        url = mitm.url                      # wss://127.0.0.1:PORT
"""

from __future__ import annotations

from pathlib import Path

import trio

from relay.config.certs import write_self_signed
from relay.net.tls import server_tls_context
from relay.net.websocket import client_tls_context

__all__ = ["PathAttacker", "ws_client_frame"]


def ws_client_frame(payload: bytes) -> bytes:
    """A masked (client -> server) binary WebSocket frame holding ``payload`` (mask key
    0, so the masked bytes equal the payload)."""
    size = len(payload)
    if size < 126:
        head = bytes([0x82, 0x80 | size])
    elif size < 65536:
        head = bytes([0x82, 0x80 | 126]) + size.to_bytes(2, "big")
    else:
        head = bytes([0x82, 0x80 | 127]) + size.to_bytes(8, "big")
    return head + b"\0\0\0\0" + payload


class PathAttacker:
    """The proxy (see the module docstring).

    Args:
        target_port: the node's port on 127.0.0.1.
        terminate: terminate TLS with a certificate of its own (written to ``cert_dir``).

    Attributes:
        port: where it listens (after :meth:`serve` started). connections: accepted so far.
        broken: connections that ended with an error on either side.
        ended: set once a relayed connection has ended (for any reason).
    """

    def __init__(self, target_port: int, *, terminate: bool = False,
                 cert_dir: Path | None = None, scheme: str = "wss") -> None:
        self._target = target_port
        self._server_ctx = None
        if terminate:
            assert cert_dir is not None
            cert, key = cert_dir / "mitm.crt", cert_dir / "mitm.key"
            write_self_signed(cert, key, "127.0.0.1", "mitm")
            self._server_ctx = server_tls_context(cert, key)
        self._scheme = scheme
        self.port = 0
        self.connections = 0
        self.broken = 0
        self.ended = trio.Event()
        self._upstreams: list[tuple[trio.abc.Stream, trio.Lock]] = []

    @property
    def url(self) -> str:
        """``wss://127.0.0.1:PORT`` (or ``ws://`` with ``scheme="ws"``)."""
        return f"{self._scheme}://127.0.0.1:{self.port}"

    async def serve(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Listen and relay until cancelled (supports ``nursery.start``)."""
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started()
        await trio.serve_listeners(self._handle, listeners)

    async def inject(self, data: bytes) -> int:
        """Write ``data`` into every open client -> node stream, between two chunks of
        the real traffic. Returns how many streams got it."""
        done = 0
        for stream, lock in list(self._upstreams):
            async with lock:
                try:
                    await stream.send_all(data)
                    done += 1
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    pass
        return done

    async def _handle(self, client: trio.abc.Stream) -> None:
        self.connections += 1
        try:
            # shielded: trio's open_tcp_stream leaks the connected socket when a
            # cancellation (the test ending) lands right as the connect succeeds
            with trio.CancelScope(shield=True), trio.fail_after(5):
                upstream: trio.abc.Stream = await trio.open_tcp_stream("127.0.0.1",
                                                                       self._target)
        except (OSError, trio.TooSlowError):
            await trio.aclose_forcefully(client)
            return
        if self._server_ctx is not None:
            client = trio.SSLStream(client, self._server_ctx, server_side=True)
            upstream = trio.SSLStream(upstream, client_tls_context(),
                                      server_hostname="127.0.0.1")
        lock = trio.Lock()
        entry = (upstream, lock)
        self._upstreams.append(entry)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._pump, client, upstream, lock, nursery.cancel_scope)
                nursery.start_soon(self._pump, upstream, client, trio.Lock(),
                                   nursery.cancel_scope)
        finally:
            self._upstreams.remove(entry)
            self.ended.set()
            try:  # under cancellation the first close may raise Cancelled: close both
                await trio.aclose_forcefully(client)
            finally:
                await trio.aclose_forcefully(upstream)

    async def _pump(self, src: trio.abc.Stream, dst: trio.abc.Stream, lock: trio.Lock,
                    scope: trio.CancelScope) -> None:
        try:
            while chunk := await src.receive_some(65536):
                async with lock:
                    await dst.send_all(chunk)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self.broken += 1
        scope.cancel()
