"""A new home that refuses a reshape's handoff for good (a hostile or buggy node, an
older version; docs/operations.md, "A stuck handoff"). Before: the old home logged
"...; retrying" at info and asked again without end, the user's move never finished and
nothing told the operator. Now, after a few refusals, the old home stops asking, keeps
serving the user (nothing it accepted is lost), warns once, and shows the user in the
metric ``wa_relay_handoff_users_stuck{peer}``, ``/health`` and ``wa-relay status``; it
tries again when its link to the new home comes up anew. Refusals that waiting changes
(``storage_unavailable``, ...) are still retried with the backoff.

Real nodes on 127.0.0.1: the old home n1 and the new home n3 of a 2 -> 3 reshape. n3's
address in the cluster file is a hostile front (plain ``ws://`` has no channel binding,
so n3's signed challenge passes through) that relays everything to the real n3 but
answers the old home's ``handoff_put`` or ``handoff_done`` frames itself with an error.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from pathlib import Path

import pytest
import trio
from relay_harness import UserDevice, deliveries, publish, session
from trio_websocket import (
    ConnectionClosed,
    WebSocketConnection,
    WebSocketRequest,
    open_websocket_url,
    serve_websocket,
)

from relay.admin.reshape import ReshapeWatch
from relay.admin.status import cluster_status, format_status, http_get
from relay.config import NodeConfig
from relay.config.ring import Ring
from relay.node import Node
from relay.protocol import DEFAULT_LIMITS, decode, write_frame
from relay.protocol.frames import Error, Send, Sent, Sync
from relay.services.handoff import mark_prefix
from relay.services.handoff_refusals import MAX_REFUSALS
from relay.testing import LocalCluster, free_ports, node_configs, reshape_configs

DEADLINE = 40
PEER_LIMITS = DEFAULT_LIMITS.for_peers()
BIG = 8 * 1024 * 1024
QUIET = 1.5
"""Seconds watched after a user got stuck: without the fix, the next attempt comes
after the backoff's third delay (0.8 s +- 25 %)."""


class RefusingFront:
    """The hostile new home's address: relays every WebSocket message between a
    connecting node and the real node at ``upstream``, except frames of type ``refuse``
    from the connecting node, which it answers itself with ``error {code}`` while
    :attr:`refusing` is set (the first ``times`` of them, or all with ``None``).

    Attributes:
        refused: how many frames it refused. seen: frames of type ``refuse`` seen.
    """

    def __init__(self, port: int, upstream: str, refuse: str, code: str,
                 times: int | None = None) -> None:
        self.port, self.upstream = port, upstream
        self.refuse, self.code, self.times = refuse, code, times
        self.refusing = True
        self.refused = 0
        self.seen = 0
        self._clients: list[WebSocketConnection] = []

    async def serve(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        await serve_websocket(self._handle, "127.0.0.1", self.port, ssl_context=None,
                              max_message_size=BIG, task_status=task_status)

    async def drop_links(self) -> None:
        """Close every relayed connection (the connecting node links again)."""
        for ws in list(self._clients):
            await ws.aclose(1001, "front restarting")

    async def _handle(self, request: WebSocketRequest) -> None:
        client = await request.accept()
        self._clients.append(client)
        try:
            async with open_websocket_url(self.upstream, max_message_size=BIG) as node, \
                    trio.open_nursery() as nursery:
                nursery.start_soon(self._to_node, client, node, nursery.cancel_scope)
                nursery.start_soon(self._pump, node, client, nursery.cancel_scope)
        except (ConnectionClosed, OSError, trio.BrokenResourceError):
            pass
        finally:
            self._clients.remove(client)
            with trio.CancelScope(shield=True), trio.move_on_after(2):
                await client.aclose()

    def _refuses(self, frame: dict) -> bool:
        if frame.get("t") != self.refuse:
            return False
        self.seen += 1
        return self.refusing and (self.times is None or self.refused < self.times)

    async def _to_node(self, src: WebSocketConnection, dst: WebSocketConnection,
                       scope: trio.CancelScope) -> None:
        try:
            while True:
                raw = await src.get_message()
                frame = decode(raw, PEER_LIMITS)
                if self._refuses(frame):
                    self.refused += 1
                    await src.send_message(write_frame(Error(
                        id=frame["id"], code=self.code, message="refused by a hostile home")))
                else:
                    await dst.send_message(raw)
        except ConnectionClosed:
            pass
        scope.cancel()

    @staticmethod
    async def _pump(src: WebSocketConnection, dst: WebSocketConnection,
                    scope: trio.CancelScope) -> None:
        try:
            while True:
                await dst.send_message(await src.get_message())
        except ConnectionClosed:
            pass
        scope.cancel()


def _homed(old: Ring, new: Ring, old_home: str, new_home: str) -> UserDevice:
    while True:
        d = UserDevice()
        if old.home(d.user_id).id == old_home and new.home(d.user_id).id == new_home:
            return d


def _send(i: int, to: UserDevice, body: bytes) -> Send:
    return Send(id=i, msg_id=os.urandom(16), recipients=[to.recipient(body)])


@dataclasses.dataclass
class Setup:
    cluster: LocalCluster
    front: RefusingFront
    n1: Node
    mover: UserDevice
    friend: UserDevice
    before: list[bytes]  # bodies queued for the mover at n1 before the reshape
    admin: str


async def _reshape_against(nursery: trio.Nursery, refuse: str, code: str,
                           times: int | None = None) -> Setup:
    """n1 (with the mover, moving to n3, and a friend, staying) reshaped 2 -> 3; n3's
    address is a :class:`RefusingFront`. Returns once n1 serves with both rings."""
    old = node_configs(2)
    new = reshape_configs(old, 3)
    old_ring, new_ring = Ring(old[0].cluster), Ring(new[0].cluster)
    mover = _homed(old_ring, new_ring, "n1", "n3")
    friend = _homed(old_ring, new_ring, "n1", "n1")
    cluster = LocalCluster(nursery, old)
    await cluster.start("n1")
    for device in (mover, friend):
        assert not isinstance(await publish(cluster.url("n1"), device), Error)
    before = [os.urandom(64) for _ in range(2)]
    async with session(cluster.url("n1"), friend) as f:
        for i, body in enumerate(before, start=3):
            assert await f.request(_send(i, mover, body)) == Sent(id=i, status="stored")
    cluster.stop("n1")
    hidden, admin_port = free_ports(2)
    front = RefusingFront(_config(new, "n3").port, f"ws://127.0.0.1:{hidden}", refuse, code,
                          times)
    new = [dataclasses.replace(c, port=hidden) if c.id == "n3" else
           dataclasses.replace(c, admin_port=admin_port) if c.id == "n1" else c for c in new]
    cluster.configs = new
    cluster.urls.update({c.id: c.node.url for c in new})  # n3's: the front
    await cluster.start("n3")
    await nursery.start(front.serve)  # after n3: a link through the front to a n3 not yet
    # listening fails its handshake (test_reshape_finish.py found it)
    nodes: list[Node] = []
    await cluster.start("n1", on_node=nodes.append)
    return Setup(cluster, front, nodes[0], mover, friend, before,
                 _config(new, "n1").admin_url or "")


def _config(configs: list[NodeConfig], node_id: str) -> NodeConfig:
    return next(c for c in configs if c.id == node_id)


async def _health(admin: str) -> dict:
    code, body = await http_get(admin + "/health", 5)
    assert code == 200, body
    return json.loads(body)["handoff"]


async def _stuck_gauge(admin: str) -> str:
    _, body = await http_get(admin + "/metrics", 5)
    return next(line for line in body.decode().splitlines()
                if line.startswith('wa_relay_handoff_users_stuck{peer="n3"}'))


@pytest.mark.parametrize(("refuse", "code", "retry"), [
    ("handoff_put", "bad_request", "the new home comes back"),
    ("handoff_done", "too_large", "the old home restarts")])
async def test_a_handoff_refused_for_good_stops_is_shown_and_the_user_stays_served(
        nursery, caplog, refuse: str, code: str, retry: str) -> None:
    caplog.set_level(logging.INFO, logger="wa_relay.node.n1")
    with trio.fail_after(DEADLINE):
        s = await _reshape_against(nursery, refuse, code)
        n1, mover = s.n1, s.mover
        watch, said = ReshapeWatch(Path("unused")), []  # what `wa-relay cluster` prints
        watch.on_node(n1)
        nursery.start_soon(watch.wait, 1, said.append)
        while not n1.handoff.refusals.is_stuck(mover.user_id):  # noqa: ASYNC110 - poll, deadline above
            await trio.sleep(0.02)
        stuck_at = trio.current_time()
        assert s.front.refused == MAX_REFUSALS

        # the operator's views: /health (and status), the metric, one warning line
        handoff = await _health(s.admin)
        assert (handoff["reshaping"], handoff["done"], handoff["remaining"]) == (True, False, 1)
        assert (handoff["stuck"], handoff["stuck_by"]) == (1, {"n3": 1})
        (entry,) = handoff["stuck_users"]
        assert (entry["user_id"], entry["peer"], entry["code"], entry["attempts"]) == (
            mover.user_id, "n3", code, MAX_REFUSALS)
        assert entry["message"] == "refused by a hostile home"
        assert await _stuck_gauge(s.admin) == 'wa_relay_handoff_users_stuck{peer="n3"} 1.0'
        n1_info = s.cluster.ring.node("n1")
        assert n1_info is not None
        (st,) = await cluster_status([n1_info], {"n1": s.admin}, s.cluster.ring.version)
        line = format_status(st)
        assert "handoff: 1 users to hand over (1 STUCK)" in line, line
        assert f"handoff of {mover.user_id} to n3 STUCK: refused 3 times ({code}: " in line
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING
                    and "stopped retrying" in r.getMessage()]
        assert len(warnings) == 1 and mover.user_id[:8] in warnings[0], warnings
        assert f"({code}: refused by a hostile home)" in warnings[0]
        while not said:  # noqa: ASYNC110 - poll, deadline above
            await trio.sleep(0.02)
        assert said[0].startswith(f"handoff n1: {mover.user_id} to n3 STUCK, refused 3 times")

        # the user is served at its old home as before: what was queued, and new traffic
        storage = s.cluster.storages["n1"]
        assert not [m for m in await storage.marks(mark_prefix(n1.homes.version))
                    if "/out/" in m]
        async with session(s.cluster.url("n1"), mover) as m:
            await m.send(Sync(id=2))
            got = await deliveries(m, len(s.before))
            assert [d.envelope.body for d in got] == s.before
            assert await m.request(_send(3, s.friend, b"hi")) == Sent(id=3,
                                                                              status="stored")
            async with session(s.cluster.url("n1"), s.friend) as f:
                assert await f.request(_send(3, mover, b"back")) == Sent(
                    id=3, status="stored")
            (new,) = await deliveries(m, 1)
            assert new.envelope.body == b"back"
        assert await storage.queue_length(s.friend.user_id, 0) == 1

        # and not asked again
        await trio.sleep_until(stuck_at + QUIET)  # watching for a retry that must not come
        assert s.front.refused == MAX_REFUSALS
        assert n1.handoff.remaining == 1 and not n1.handoff.done
        assert len(said) == 1 and len([r for r in caplog.records
                                        if "stopped retrying" in r.getMessage()]) == 1

        # the new home is fixed; it comes back (the old home's link to it anew), or the
        # old home restarts: the user is tried again and handed over
        s.front.refusing = False
        if retry == "the new home comes back":
            await s.front.drop_links()
        else:
            s.cluster.stop("n1")
            restarted: list[Node] = []
            await s.cluster.start("n1", on_node=restarted.append)
            n1 = restarted[0]
        while n1.handoff.remaining:  # noqa: ASYNC110 - poll, deadline above
            await trio.sleep(0.02)
        assert s.front.refused == MAX_REFUSALS
        assert await s.cluster.storages["n3"].get_device_list(mover.user_id) is not None
        assert await storage.get_device_list(mover.user_id) is None
        assert (await _health(s.admin))["stuck"] == 0
        assert await _stuck_gauge(s.admin) == 'wa_relay_handoff_users_stuck{peer="n3"} 0.0'


async def test_a_refusal_that_waiting_changes_is_retried_until_the_user_is_handed_over(
        nursery, caplog) -> None:
    """``storage_unavailable`` (the new home's disk failing for a while) is not a reason
    to give up: more refusals than :data:`MAX_REFUSALS`, then the handoff goes through."""
    caplog.set_level(logging.INFO, logger="wa_relay.node.n1")
    times = MAX_REFUSALS + 1
    with trio.fail_after(DEADLINE):
        s = await _reshape_against(nursery, "handoff_put", "storage_unavailable", times)
        while s.n1.handoff.remaining:  # noqa: ASYNC110 - poll, deadline above
            await trio.sleep(0.02)
        assert s.front.refused == times
        assert await s.cluster.storages["n3"].queue_length(s.mover.user_id, 0) == len(s.before)
        assert not any(r.levelno >= logging.WARNING and "handoff" in r.getMessage()
                       for r in caplog.records)
