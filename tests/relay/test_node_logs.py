"""What a node logs at INFO and above: link state changes and one line per
connection, not every attempt or authentication (a new user reads these)."""

from __future__ import annotations

import logging
import re

import pytest
import trio
from relay_harness import Cluster, UserDevice, connect, make_configs, publish, session

from relay.config.ring import Ring
from relay.net import ConnectionLost
from relay.protocol import DEFAULT_LIMITS
from relay.protocol.frames import Ok, Ping
from relay.services.federation import UNREACHABLE_WARNING, PeerLink


def _lines(caplog, level: int, needle: str = "") -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.levelno == level and needle in r.getMessage()]


async def _until_logged(caplog, level: int, needle: str, count: int = 1) -> None:
    while True:  # poll; the caller's fail_after bounds it
        if len(_lines(caplog, level, needle)) >= count:
            return
        await trio.sleep(0.01)


async def test_peer_links_log_up_and_down_not_every_attempt(nursery, caplog) -> None:
    caplog.set_level(logging.DEBUG, logger="wa_relay")
    cluster = Cluster(nursery, make_configs(2))
    with trio.fail_after(20):
        await cluster.start("n1")
        # n2 is not started yet: n1's attempts fail quietly (debug)
        await _until_logged(caplog, logging.DEBUG, "peer link to n2: attempt failed", 2)
        assert _lines(caplog, logging.INFO, "peer") == []
        assert _lines(caplog, logging.WARNING) == []
        await cluster.start("n2")
        await _until_logged(caplog, logging.INFO, "peer link to n2 up")
        await _until_logged(caplog, logging.INFO, "peer link to n1 up")
        assert _lines(caplog, logging.WARNING) == []
        # a link that was up and goes down: one warning, then quiet retries
        cluster.stop("n2")
        await _until_logged(caplog, logging.WARNING, "peer link to n2 down")
        failed = len(_lines(caplog, logging.DEBUG, "peer link to n2: attempt failed"))
        await _until_logged(caplog, logging.DEBUG, "peer link to n2: attempt failed", failed + 2)
        assert len(_lines(caplog, logging.WARNING)) == 1
        (line,) = _lines(caplog, logging.WARNING)
        assert line.startswith("peer link to n2 down: ") and line.endswith("; reconnecting")
        assert _lines(caplog, logging.INFO, "peer link to n2 up") == ["peer link to n2 up"]


async def test_a_peer_unreachable_for_a_minute_is_one_warning(autojump_clock, caplog) -> None:
    caplog.set_level(logging.DEBUG, logger="wa_relay")
    cfg = make_configs(2)[0]  # nothing listens on n2's port
    link = PeerLink(cfg.id, cfg.signing_key, Ring(cfg.cluster), cfg.cluster[1], DEFAULT_LIMITS,
                    logging.getLogger("wa_relay.node.n1"))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(link.run)
        await trio.sleep(UNREACHABLE_WARNING - 5)
        assert _lines(caplog, logging.DEBUG, "peer link to n2: attempt failed")
        assert _lines(caplog, logging.WARNING) == []
        await trio.sleep(5 * UNREACHABLE_WARNING)
        (line,) = _lines(caplog, logging.WARNING)
        assert line.startswith("peer n2 unreachable for ") and line.endswith("; still retrying")
        nursery.cancel_scope.cancel()


async def test_one_info_line_per_connection_and_auth_at_debug(nursery, caplog) -> None:
    caplog.set_level(logging.INFO, logger="wa_relay")
    cluster = Cluster(nursery, make_configs(1, handshake_timeout=0.5))
    await cluster.start("n1")
    url = cluster.url("n1")
    dev = UserDevice()
    with trio.fail_after(10):
        assert isinstance(await publish(url, dev), Ok)
        await _until_logged(caplog, logging.INFO, "ended after")
        caplog.clear()
        async with session(url, dev) as c:
            assert await c.request(Ping(id=5)) == Ok(id=5)
        await _until_logged(caplog, logging.INFO, "ended after", 1)
        async with connect(url) as c:  # five bad frames: closed 1008
            for _ in range(5):
                await c.ws.send_message(b"\xc1")
            with pytest.raises(ConnectionLost):
                while True:  # drain the error frames, so the close handshake completes
                    await c.recv()
            await _until_logged(caplog, logging.INFO, "ended after", 2)
        async with connect(url) as c:  # never says hello: closed after the handshake timeout
            await _until_logged(caplog, logging.INFO, "ended after", 3)
    lines = [re.sub(r"127\.0\.0\.1:\d+ (.*) ended after [\d.]+ s", r"R \1 ended", r.getMessage())
             for r in caplog.records if r.levelno >= logging.INFO]
    assert lines == [
        f"connection R (device {dev.user_id[:8]}/0) ended: closed by the remote (1000)",
        "connection R (unauthenticated) ended: closed 1008 bad_frame",
        "connection R (unauthenticated) ended: closed 1008 no authentication within 0.5 s",
    ]


async def test_device_authentication_is_a_debug_line(node1, caplog) -> None:
    caplog.set_level(logging.DEBUG, logger="wa_relay")
    url = node1.url("n1")
    dev = UserDevice()
    with trio.fail_after(10):
        await publish(url, dev)
        async with session(url, dev):
            pass
    auth = [(r.levelno, r.getMessage()) for r in caplog.records
            if r.getMessage().endswith(" authenticated")]
    assert auth == [(logging.DEBUG, f"device {dev.user_id[:8]}/0 authenticated")]


async def test_a_stopping_node_closes_its_peer_links_with_1001(nursery, caplog) -> None:
    """Node.shut_down (SIGTERM) closes both directions of each peer link with 1001 (going
    away): the accepted link with the other sockets, its own outgoing link by
    PeerLink.go_away; the peer sees clean closes, never 1006."""
    caplog.set_level(logging.DEBUG, logger="wa_relay")
    cluster = Cluster(nursery, make_configs(2))
    stop = trio.Event()
    with trio.fail_after(20):
        await cluster.start("n1", stop=stop)
        await cluster.start("n2")
        await _until_logged(caplog, logging.INFO, "peer link to n2 up")
        await _until_logged(caplog, logging.INFO, "peer link to n1 up")
        stop.set()
        # n2's outgoing link to n1, closed by n1 as an accepted socket
        await _until_logged(caplog, logging.WARNING, "peer link to n1 down")
        # n1's outgoing link to n2, closed by n1's PeerLink.go_away
        await _until_logged(caplog, logging.INFO, "(peer n1) ended")
    (down,) = _lines(caplog, logging.WARNING, "peer link to n1 down")
    assert "1001" in down, down
    (ended,) = _lines(caplog, logging.INFO, "(peer n1) ended")
    assert "closed by the remote" in ended and "1001" in ended, ended
    assert "1006" not in " ".join(r.getMessage() for r in caplog.records)
