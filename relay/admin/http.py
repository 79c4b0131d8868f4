"""The admin HTTP listener of one node, over :mod:`h11` (sans-I/O HTTP/1.1) and Trio.

Routes (``GET`` or ``HEAD``; anything else is 404 or 405):

``/metrics``
    Prometheus text format of the node's own registry (:class:`relay.admin.metrics.NodeMetrics`),
    gauges refreshed first.
``/health``
    200 ``{"status": "ok", ...}`` while the node runs and its storage answers, else 503
    ``{"status": "storage_unavailable", ...}``; the object also names the node, its
    version, ring version, URL and uptime.
``/ready``
    200 ``{"ready": true}`` once the node listens and until it starts stopping; else 503.

One request per connection (``Connection: close``), each bounded by
:data:`REQUEST_TIMEOUT` seconds. At most :data:`MAX_CLIENTS` connections are open at
once: a new one past that closes the oldest that has not sent its whole request yet
(a probe sends it at once, an idle or slow client does not), or, if every one is
being answered, is closed at once. So idle connections can neither hold the health
checks off (16 of them used to stall ``/ready`` for 10 s each round) nor use up the
node's file descriptors (every accepted one used to wait, without a timeout, for a
free slot). Bind it to loopback or a private network: it has no authentication.
"""

from __future__ import annotations

import json
from functools import partial
from http import HTTPStatus
from typing import TYPE_CHECKING

import h11
import trio
from prometheus_client import CONTENT_TYPE_LATEST

from relay.admin.metrics import relay_version

if TYPE_CHECKING:
    from relay.node import Node

MAX_CLIENTS = 16
REQUEST_TIMEOUT = 10.0
_JSON = "application/json"


async def serve_admin(
    node: Node, host: str, port: int, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the admin routes of ``node`` on ``host:port`` until cancelled.

    ``nursery.start`` gets the bound port (useful with port 0).

    Raises:
        OSError: the address cannot be bound.
    """
    try:
        listeners = await trio.open_tcp_listeners(port, host=host)
    except OSError as exc:  # name the address: "Address already in use" alone does not
        raise OSError(exc.errno, f"cannot listen on {host}:{port} (admin): "
                                 f"{exc.strerror or exc}") from exc
    clients = _Clients(MAX_CLIENTS)
    async with trio.open_nursery() as nursery:
        await nursery.start(partial(trio.serve_listeners, partial(_serve_one, node, clients),
                                    listeners))
        task_status.started(listeners[0].socket.getsockname()[1])


class _Client:
    """One open admin connection: its deadline scope, and whether its request is in."""

    __slots__ = ("answering", "scope")

    def __init__(self, scope: trio.CancelScope) -> None:
        self.scope = scope
        self.answering = False


class _Clients:
    """The open admin connections, oldest first, at most ``cap`` of them."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.open: list[_Client] = []

    def admit(self, client: _Client) -> bool:
        """Count ``client`` in; at the cap, first close the oldest one still reading
        its request. ``False`` (not counted): every open one is being answered."""
        if len(self.open) >= self.cap:
            reading = next((c for c in self.open if not c.answering), None)
            if reading is None:
                return False
            self.open.remove(reading)
            reading.scope.cancel()
        self.open.append(client)
        return True

    def discard(self, client: _Client) -> None:
        """``client`` is done (no-op if it was closed for a newer one)."""
        if client in self.open:
            self.open.remove(client)


async def _serve_one(node: Node, clients: _Clients, stream: trio.SocketStream) -> None:
    async with stream:
        with trio.move_on_after(REQUEST_TIMEOUT) as scope:
            client = _Client(scope)
            if not clients.admit(client):
                return  # every slot is answering a request: close this one at once
            try:
                await _exchange(node, stream, client)
            except (h11.ProtocolError, trio.BrokenResourceError, trio.ClosedResourceError):
                pass  # a broken or malformed client: nothing to answer
            except Exception:  # noqa: BLE001 - the per-connection boundary: log, the node goes on
                node.log.exception("admin request failed")
            finally:
                clients.discard(client)


async def _exchange(node: Node, stream: trio.SocketStream, client: _Client) -> None:
    conn = h11.Connection(h11.SERVER)
    request: h11.Request | None = None
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            conn.receive_data(await stream.receive_some(16384))
            continue
        if isinstance(event, h11.Request):
            request = event
        elif isinstance(event, h11.EndOfMessage) and request is not None:
            client.answering = True
            break
        elif isinstance(event, h11.ConnectionClosed):
            return
    method = request.method.decode("ascii", "replace")
    path = request.target.decode("ascii", "replace").split("?", 1)[0]
    status, ctype, body = await route(node, method, path)
    headers = [("Content-Type", ctype), ("Content-Length", str(len(body))),
               ("Connection", "close"), ("Cache-Control", "no-store")]
    out = conn.send(h11.Response(status_code=status, headers=headers,
                                 reason=HTTPStatus(status).phrase.encode()))
    if method != "HEAD":
        out += conn.send(h11.Data(data=body))
    out += conn.send(h11.EndOfMessage())
    await stream.send_all(out)


def _json(status: int, obj: dict) -> tuple[int, str, bytes]:
    return status, _JSON, json.dumps(obj, sort_keys=True).encode() + b"\n"


async def route(node: Node, method: str, path: str) -> tuple[int, str, bytes]:
    """Answer one request: ``(status, content type, body)``."""
    if path not in ("/metrics", "/health", "/ready"):
        return _json(404, {"error": f"no such path {path!r}; try /metrics, /health, /ready"})
    if method not in ("GET", "HEAD"):
        return _json(405, {"error": "only GET and HEAD"})
    if path == "/metrics":
        await node.metrics.refresh(node)
        return 200, CONTENT_TYPE_LATEST, node.metrics.render()
    if path == "/ready":
        ready = node.ready.is_set() and not node.stopping.is_set()
        return _json(200 if ready else 503, {"ready": ready, "node": node.id})
    ok = await node.metrics.refresh(node)
    return _json(200 if ok else 503, {
        "status": "ok" if ok else "storage_unavailable", "node": node.id,
        "version": relay_version(), "ring": node.ring.version, "url": node.config.node.url,
        "uptime": round(trio.current_time() - node.started_at, 3),
        "stopping": node.stopping.is_set(), "handoff": node.handoff.progress(),
    })
