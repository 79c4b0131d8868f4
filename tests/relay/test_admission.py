"""Admission of connections: handshake deadline, per-address and node-wide caps."""

from __future__ import annotations

import logging
from contextlib import AsyncExitStack

import pytest
import trio
from relay_harness import Cluster, RawClient, UserDevice, connect, make_configs, publish

from relay.net import ConnectFailed, ConnectionLost
from relay.net.admission import PENDING_GRACE, Admission, HandshakeDeadline, Refused, address_key
from relay.protocol.frames import AuthOk, Error, LinkOpen, LinkOpened, Ok, Ping

# ------------------------------------------------------------------ bookkeeping


def test_address_key_groups_ipv6_by_64() -> None:
    assert address_key("127.0.0.1") == "127.0.0.1"
    assert address_key("2001:db8:1:2:aaaa::1") == "2001:db8:1:2::/64"
    assert address_key("2001:db8:1:2:bbbb::7") == "2001:db8:1:2::/64"
    assert address_key("2001:db8:1:3::1") == "2001:db8:1:3::/64"
    assert address_key("::ffff:10.1.2.3") == "10.1.2.3"
    assert address_key("<unix socket>") == "<unix socket>"


def test_pending_cap_per_address_and_release() -> None:
    adm = Admission(max_connections=100, max_pending_per_ip=2, clock=lambda: 0.0)
    a1, a2 = adm.admit("10.0.0.1"), adm.admit("10.0.0.1")
    with pytest.raises(Refused, match="too many unauthenticated connections from 10.0.0.1"):
        adm.admit("10.0.0.1")
    b = adm.admit("10.0.0.2")  # another address has its own count
    assert (adm.pending("10.0.0.1"), adm.pending("10.0.0.2"), adm.total) == (2, 1, 3)
    a1.authenticated()  # no longer pending, still counted in total
    a1.authenticated()  # idempotent
    assert (adm.pending("10.0.0.1"), adm.total) == (1, 3)
    a3 = adm.admit("10.0.0.1")
    with a2:
        pass  # released on exit
    with a2:
        pass  # idempotent
    assert (adm.pending("10.0.0.1"), adm.total) == (1, 3)
    for t in (a1, a3, b):
        t.release()
    assert (adm.pending("10.0.0.1"), adm.pending("10.0.0.2"), adm.total) == (0, 0, 0)


def test_node_wide_cap_counts_authenticated_connections() -> None:
    adm = Admission(max_connections=2, max_pending_per_ip=10, max_pending=10, clock=lambda: 0.0)
    first = adm.admit("10.0.0.1")
    first.authenticated()
    adm.admit("10.0.0.2")
    with pytest.raises(Refused, match="limit of 2 connections"):
        adm.admit("10.0.0.3")
    first.release()
    adm.admit("10.0.0.3")


def test_refusals_are_logged_at_most_once_per_interval() -> None:
    adm = Admission(max_connections=1, max_pending_per_ip=1, clock=lambda: 0.0)
    assert adm.note_refusal(100.0) == 1
    assert [adm.note_refusal(100.0 + i) for i in range(1, 10)] == [0] * 9
    assert adm.note_refusal(110.0) == 10


async def test_handshake_deadline(autojump_clock) -> None:
    passed = HandshakeDeadline(10)
    start = trio.current_time()
    assert await passed.wait() is True
    assert trio.current_time() - start == pytest.approx(10)

    done = HandshakeDeadline(10)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(trio.sleep, 3)
        await trio.sleep(3)
        done.done()
        assert await done.wait() is False
    assert trio.current_time() - start == pytest.approx(13)

    linking = HandshakeDeadline(10)
    await trio.sleep(5)
    linking.linking(30)  # now + 30 > the original deadline
    await trio.sleep(20)
    linking.linking(30)  # a second mailbox does not renew the connection's life
    assert await linking.wait() is True
    assert trio.current_time() - start == pytest.approx(48)


def test_oldest_pending_connection_is_evicted_after_the_grace_period() -> None:
    now = [0.0]
    adm = Admission(max_connections=10, max_pending_per_ip=2, max_pending=3,
                    clock=lambda: now[0])
    evicted: list[str] = []
    a1 = adm.admit("10.0.0.1")
    a1.on_evict = lambda: evicted.append("a1")
    a2 = adm.admit("10.0.0.1")
    a2.on_evict = lambda: evicted.append("a2")
    with pytest.raises(Refused, match="from 10.0.0.1"):  # both are within their grace
        adm.admit("10.0.0.1")
    now[0] = PENDING_GRACE
    honest = adm.admit("10.0.0.1")  # the oldest idle one makes room
    assert evicted == ["a1"] and adm.pending("10.0.0.1") == 2 and adm.evicted == 1
    honest.authenticated()
    b = adm.admit("10.0.0.2")
    b.on_evict = lambda: evicted.append("b")
    now[0] = 2 * PENDING_GRACE
    adm.admit("10.0.0.3")
    assert adm.pending_total == 3 and evicted == ["a1"]
    adm.admit("10.0.0.4")  # the pool (3) is full: its oldest (a2) goes
    assert evicted == ["a1", "a2"] and adm.pending_total == 3 and adm.total == 4
    a1.release()  # releasing an evicted ticket again changes nothing
    assert adm.total == 4


# ------------------------------------------------------------------ live nodes


async def _refusal_status(url: str) -> int | None:
    """The HTTP status a new connection is refused with, ``None`` if accepted."""
    status = None
    try:
        async with connect(url):
            pass
    except ConnectFailed as exc:
        status = exc.http_status
    return status


async def _expect_close(client: RawClient) -> tuple[list, int]:
    frames = []
    try:
        while True:
            frames.append(await client.recv())
    except ConnectionLost:
        return frames, client.close_code


async def _admitted(stack: AsyncExitStack, url: str) -> RawClient:
    """A new connection, retried while refused: a closed connection's place is
    given back when the node's handler for it ends, a moment after the close."""
    while True:
        try:
            return await stack.enter_async_context(connect(url))
        except ConnectFailed as exc:
            assert exc.http_status == 503, exc
        await trio.sleep(0.01)


async def _eventually_accepted(url: str) -> None:
    async with AsyncExitStack() as stack:
        await _admitted(stack, url)


async def test_idle_connections_are_closed_after_the_handshake_timeout(nursery) -> None:
    cluster = Cluster(nursery, make_configs(1, handshake_timeout=0.5))
    await cluster.start("n1")
    url = cluster.url("n1")
    dev = UserDevice()
    assert isinstance(await publish(url, dev), Ok)
    with trio.fail_after(10):
        async with connect(url) as idle, connect(url) as hello_only, connect(url) as device, \
                connect(url) as linking:
            await hello_only.hello()
            await device.hello()
            assert isinstance(await device.auth(dev), AuthOk)
            await linking.hello()
            assert isinstance(await linking.request(LinkOpen(id=3, device_info=b"i")), LinkOpened)
            started = trio.current_time()
            for client in (idle, hello_only):
                frames, code = await _expect_close(client)
                assert code == 1008
                assert frames == [Error(id=0, code="unauthorized",
                                        message="authenticate within 0.5 s of connecting")]
            assert trio.current_time() - started >= 0.4
            # the authenticated device and the linking device are still served
            assert await device.request(Ping(id=5)) == Ok(id=5)
            assert await linking.request(Ping(id=6)) == Ok(id=6)


async def test_unauthenticated_connections_per_address_are_capped(nursery) -> None:
    cluster = Cluster(nursery, make_configs(1, max_pending_per_ip=3))
    await cluster.start("n1")
    url = cluster.url("n1")
    dev = UserDevice()
    assert isinstance(await publish(url, dev), Ok)
    with trio.fail_after(10):
        async with AsyncExitStack() as stack:
            clients = [await _admitted(stack, url) for _ in range(3)]
            for c in clients:
                await c.hello()
            assert await _refusal_status(url) == 503
            # authenticating frees a place; the device stays connected
            assert isinstance(await clients[0].auth(dev), AuthOk)
            fourth = await _admitted(stack, url)
            assert await _refusal_status(url) == 503
            await fourth.hello()
            assert await clients[0].request(Ping(id=9)) == Ok(id=9)
        await _eventually_accepted(url)  # all closed: places given back


async def test_connections_beyond_max_connections_are_refused(nursery, caplog) -> None:
    cluster = Cluster(nursery, make_configs(1, max_connections=3))
    await cluster.start("n1")
    url = cluster.url("n1")
    devices = [UserDevice(), UserDevice()]
    for d in devices:
        assert isinstance(await publish(url, d), Ok)
    caplog.set_level(logging.INFO)
    with trio.fail_after(10):
        async with AsyncExitStack() as stack:
            for d in devices:
                c = await _admitted(stack, url)
                await c.hello()
                assert isinstance(await c.auth(d), AuthOk)
            await _admitted(stack, url)
            for _ in range(5):
                assert await _refusal_status(url) == 503
        await _eventually_accepted(url)
    refusals = [r for r in caplog.records if "refused" in r.getMessage()]
    assert len(refusals) == 1, refusals  # one line, not one per refusal
    assert "limit of 3 connections" in refusals[0].getMessage()


async def test_many_idle_sockets_from_one_address(nursery) -> None:
    """The hostile case, scaled down: idle WebSockets that never say hello."""
    cluster = Cluster(nursery, make_configs(1, handshake_timeout=1.0))
    await cluster.start("n1")
    url = cluster.url("n1")
    closed: list[int] = []
    refused: list[int] = []

    async def one() -> None:
        try:
            async with connect(url) as c:
                closed.append((await _expect_close(c))[1])
        except ConnectFailed as exc:
            refused.append(exc.http_status)

    with trio.fail_after(20):
        async with trio.open_nursery() as n:
            for _ in range(80):
                n.start_soon(one)
        # 64 pending at most per address: the rest are refused (503) or, if the first ones
        # are older than 1 s by then (a loaded machine), take their place (closed 1008)
        assert set(closed) <= {1008} and set(refused) <= {503}, (closed, refused)
        assert len(closed) + len(refused) == 80 and len(closed) >= 64, (closed, refused)
        await _eventually_accepted(url)
        async with connect(url) as c:
            await c.hello()
