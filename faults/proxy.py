"""A TCP proxy on 127.0.0.1 that can cut the links it carries: the network of the fault suite.

One :func:`serve_proxy` listens in front of each relay node; the cluster file
names the proxy's address as the node's URL, so peer links (node to node) and
``wa-cli`` connections (client to node) all pass through it. Every accepted
connection is labelled with its source, a node id (found with
:func:`faults.owners.connection_owner` among the running nodes' pids) or
``"client"``, and its destination, the node behind the proxy.

A :class:`Network` holds the rules. A rule for ``(source, destination)`` is one
of these modes (:data:`PASS` when there is none):

``reset``
    Both sides are closed with a TCP reset (``SO_LINGER`` 0): the connections
    open now, and every new one as soon as it is accepted (like a refused
    connection).
``silent``
    Forwarding stops without closing anything (nothing is read, so the
    sender's kernel buffers fill as on a network that drops packets). New
    connections are accepted and held. On :meth:`Network.heal` they resume
    where they stopped: a partition that TCP outlives.
``dead``
    Like ``silent``, but the connections never resume: a NAT entry that
    expired, a Wi-Fi that died. After the heal new connections pass while the
    dead ones stay dark until ``dead_ttl`` seconds after they went dark, when
    they are reset (TCP's own retransmission timeout, shortened).

A destination whose node is down gets new connections reset at once (the
connection to the node is refused).
"""

from __future__ import annotations

import socket
import struct
from collections import Counter
from collections.abc import Callable, Iterable

import trio

from .owners import connection_owner

PASS, RESET, SILENT, DEAD = "pass", "reset", "silent", "dead"
CUT_MODES = (RESET, SILENT, DEAD)
CLIENT = "client"
HOST = "127.0.0.1"
BUFFER = 65536  # bytes read per receive
CONNECT_TIMEOUT = 5.0  # seconds to reach the node behind the proxy


class Conn:
    """One proxied connection: ``src`` -> ``dst``, its state and cancel scope."""

    def __init__(self, src: str, dst: str, down: trio.SocketStream) -> None:
        self.src, self.dst = src, dst
        self.down = down  # the side that connected to us
        self.up: trio.SocketStream | None = None  # our connection to the node
        self.state = PASS
        self.scope = trio.CancelScope()
        self._changed = trio.Event()

    def _set(self, state: str) -> None:
        self.state = state
        self._changed.set()
        self._changed = trio.Event()

    async def wait_pass(self) -> None:
        """Return once the connection forwards (at once in :data:`PASS`)."""
        while self.state != PASS:
            await self._changed.wait()

    def reset(self) -> None:
        """Close both sides with a TCP reset."""
        self._set(RESET)
        self.scope.cancel()

    def pause(self) -> None:
        """Stop forwarding until :meth:`resume`."""
        if self.state == PASS:
            self._set(SILENT)

    def go_dead(self, ttl: float) -> None:
        """Stop forwarding for good; reset ``ttl`` seconds from now."""
        if self.state in (PASS, SILENT):
            self._set(DEAD)
            self.scope.deadline = min(self.scope.deadline, trio.current_time() + ttl)

    def resume(self) -> None:
        """Forward again after :meth:`pause` (dead connections stay dead)."""
        if self.state == SILENT:
            self._set(PASS)


class Network:
    """Cut rules between sources and destinations, and the connections they apply to.

    Args:
        dead_ttl: seconds a :data:`DEAD` connection stays dark before it is reset.

    Attributes:
        owners: ``{pid: node_id}`` of the running nodes (kept by
            :class:`faults.nodes.NodeSet`); a connection from any other process
            is labelled :data:`CLIENT`.
        counts: how many connections were accepted, reset, silenced or made
            dead, keyed ``"<event> <src kind>"`` (``peer`` or ``client``).
    """

    def __init__(self, dead_ttl: float = 60.0) -> None:
        self.dead_ttl = dead_ttl
        self.owners: dict[int, str] = {}
        self.counts: Counter[str] = Counter()
        self._rules: dict[tuple[str, str], str] = {}
        self._conns: set[Conn] = set()
        self.trace: Callable[[str], None] = lambda text: None

    def mode(self, src: str, dst: str) -> str:
        """The rule for ``src`` -> ``dst`` (:data:`PASS` if none)."""
        return self._rules.get((src, dst), PASS)

    def cut(self, pairs: Iterable[tuple[str, str]], mode: str) -> None:
        """Apply ``mode`` (one of :data:`CUT_MODES`) to ``(src, dst)`` pairs, to the
        connections open now and to new ones until :meth:`heal`.

        Raises:
            ValueError: an unknown mode.
        """
        if mode not in CUT_MODES:
            raise ValueError(f"unknown cut mode {mode!r}")
        pairs = set(pairs)
        self.trace(f"cut {mode}: {', '.join(sorted(f'{a}->{b}' for a, b in pairs))}")
        for pair in pairs:
            self._rules[pair] = mode
        for conn in list(self._conns):
            if (conn.src, conn.dst) in pairs:
                self._apply(conn, mode)

    def _apply(self, conn: Conn, mode: str) -> None:
        kind = "client" if conn.src == CLIENT else "peer"
        self.counts[f"{mode} {kind}"] += 1
        if mode == RESET:
            conn.reset()
        elif mode == SILENT:
            conn.pause()
        else:
            conn.go_dead(self.dead_ttl)

    def heal(self) -> None:
        """Drop every rule; silent connections resume, dead ones stay dark."""
        if self._rules:
            self.trace("heal network")
        self._rules.clear()
        for conn in list(self._conns):
            conn.resume()

    def open_connections(self) -> Counter[str]:
        """``{"<src>-><dst> <state>": count}`` of the connections open now."""
        return Counter(f"{c.src}->{c.dst} {c.state}" for c in self._conns)

    def _register(self, conn: Conn) -> None:
        self._conns.add(conn)

    def _unregister(self, conn: Conn) -> None:
        self._conns.discard(conn)


def _abort(stream: trio.SocketStream | None) -> None:
    """Make the next close of ``stream`` send a TCP reset."""
    if stream is None:
        return
    try:
        stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass  # already closed


async def _pump(conn: Conn, src: trio.SocketStream, dst: trio.SocketStream) -> None:
    """Copy ``src`` to ``dst`` while the connection forwards; return at end of stream."""
    while True:
        await conn.wait_pass()
        data = await src.receive_some(BUFFER)
        if not data:
            return
        await conn.wait_pass()  # bytes read just before a pause wait for the resume
        await dst.send_all(data)


async def _carry(network: Network, conn: Conn, target_port: int) -> None:
    """Hold ``conn`` per its rule, connect to the node, forward both ways."""
    mode = network.mode(conn.src, conn.dst)
    if mode != PASS:
        network._apply(conn, mode)
    await conn.wait_pass()
    with trio.fail_after(CONNECT_TIMEOUT):
        conn.up = await trio.open_tcp_stream(HOST, target_port)
    async with trio.open_nursery() as nursery:
        async def one_way(a: trio.SocketStream, b: trio.SocketStream) -> None:
            await _pump(conn, a, b)
            nursery.cancel_scope.cancel()  # one side ended: close both

        nursery.start_soon(one_way, conn.down, conn.up)
        nursery.start_soon(one_way, conn.up, conn.down)


async def serve_proxy(
    network: Network, dst: str, listener: trio.SocketListener, target_port: int,
    *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Accept on ``listener`` and proxy every connection to ``127.0.0.1:target_port``
    (node ``dst``) under ``network``'s rules, until cancelled.

    A connection ends when either side ends, breaks, or a rule resets it; errors
    of one connection end only that connection.
    """
    listen_port = listener.socket.getsockname()[1]

    async def handle(down: trio.SocketStream) -> None:
        peer_port = down.socket.getpeername()[1]
        src = connection_owner(peer_port, listen_port, dict(network.owners)) or CLIENT
        conn = Conn(src, dst, down)
        network._register(conn)
        network.counts[f"accepted {'client' if src == CLIENT else 'peer'}"] += 1
        try:
            with conn.scope:
                await _carry(network, conn, target_port)
        except* (OSError, trio.BrokenResourceError, trio.ClosedResourceError, trio.TooSlowError):
            conn.state = RESET  # the node is unreachable or a side broke: reset the other
        finally:
            network._unregister(conn)
            if conn.state in (RESET, DEAD):
                _abort(conn.down)
                _abort(conn.up)
            for stream in (conn.down, conn.up):
                if stream is not None:
                    with trio.CancelScope(shield=True):
                        await stream.aclose()

    task_status.started()
    await trio.serve_listeners(handle, [listener])


async def open_listener() -> trio.SocketListener:
    """A TCP listener on a free port of 127.0.0.1 (``listener.socket.getsockname()[1]``)."""
    (listener,) = await trio.open_tcp_listeners(0, host=HOST)
    return listener


__all__ = [
    "CLIENT", "CUT_MODES", "DEAD", "PASS", "RESET", "SILENT", "Conn", "Network", "open_listener",
    "serve_proxy",
]
