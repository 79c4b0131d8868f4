"""Attacks by an authenticated device on its own node: pipelining, acks, slow reading."""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from contextlib import asynccontextmanager

import trio
from relay_harness import RAW_SETTINGS, Cluster, RawClient, UserDevice, make_configs, publish

from relay.net import ConnectionLost, open_link
from relay.protocol.frames import Ack, AuthOk, Envelope, Sync
from relay.protocol.stored import encode_envelope

STALLED = dataclasses.replace(RAW_SETTINGS, push_buffer=1, message_queue=1,
                              receive_buffer=4096)
"""A client whose reader stops as soon as one frame waits: it reads nothing more."""


@asynccontextmanager
async def stalled_session(url: str, device: UserDevice):
    async with open_link(url, settings=STALLED) as link:
        c = RawClient(link)
        await c.hello()
        assert isinstance(await c.auth(device), AuthOk)
        yield c


async def _fill(storage, device: UserDevice, n: int, size: int) -> None:
    for _ in range(n):
        env = Envelope(msg_id=os.urandom(16), sender_user=device.user_id, sender_device=0,
                       ts=int(time.time() * 1000), kind="olm", body=os.urandom(size))
        await storage.enqueue([(device.user_id, device.device_id, encode_envelope(env))])


def _ended(caplog, needle: str) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if "ended after" in r.getMessage() and needle in r.getMessage()]


async def test_a_device_that_never_reads_but_keeps_acking_is_dropped(nursery, caplog) -> None:
    """Slowloris: a device syncs a big backlog, never reads a byte, and sends a
    (harmless) ``ack`` now and then. Its writes never progress, so the node must end the
    connection (freeing the frames queued for it) instead of holding them forever
    because *something* keeps arriving."""
    caplog.set_level(logging.INFO, logger="wa_relay.node.n1")
    cluster = Cluster(nursery, make_configs(1, keepalive_interval=0.5, keepalive_timeout=0.5))
    await cluster.start("n1")
    bob = UserDevice()
    with trio.fail_after(30):
        await publish(cluster.url("n1"), bob)
        await _fill(cluster.storages["n1"], bob, 80, 200_000)  # 16 MB: far above socket buffers
        async with stalled_session(cluster.url("n1"), bob) as b:
            await b.send(Sync(id=5))
            deadline = trio.current_time() + 8
            try:
                while not _ended(caplog, bob.user_id[:8]):
                    assert trio.current_time() < deadline, "the stalled connection was kept"
                    await b.send(Ack(id=0, seq=0))
                    await trio.sleep(0.1)
            except ConnectionLost:
                pass
        assert _ended(caplog, bob.user_id[:8])


async def test_an_ack_never_deletes_what_was_queued_but_not_written(nursery) -> None:
    """A device that reads nothing acks far ahead: the node had counted every deliver
    frame it *queued* for the socket as delivered, so the ack deleted envelopes that
    never left the node. Only what was written to the socket may be acked."""
    cluster = Cluster(nursery, make_configs(1, keepalive_interval=0))
    await cluster.start("n1")
    bob = UserDevice()
    storage = cluster.storages["n1"]
    n = 200
    with trio.fail_after(30):
        await publish(cluster.url("n1"), bob)
        await _fill(storage, bob, n, 200_000)  # 40 MB: far above any socket buffers
        async with stalled_session(cluster.url("n1"), bob) as b:
            await b.send(Sync(id=5))
            await trio.sleep(1.0)  # the pusher queued what its window allows
            await b.send(Ack(id=0, seq=10**6))
            await trio.sleep(0.5)
            left = len(await storage.read_queue(bob.user_id, 0, limit=10_000))
            # what the sockets can hold between the node and the stalled reader is
            # a few MB (a few dozen envelopes of 200 KB), never the whole backlog
            assert left >= n - 60, f"{n - left} envelopes deleted by an ack"
