"""A full storage: refusals are logged (rate-limited), the node keeps serving,
and a failing expiry sweep does not take the node down."""

from __future__ import annotations

import dataclasses
import logging
import os

import trio
from relay_harness import Cluster, device_homed_at, make_configs, publish, session

from relay.node import Node
from relay.protocol.frames import Ack, Deliver, DeliverItem, Error, Send, Sent, Sync, Synced
from relay.services.full_log import StorageFullLog
from storage import StorageFull
from storage.memory import MemoryStorage

BODY = 256 * 1024  # bytes per message; a 3 MiB map holds only a few


def _warnings(caplog, needle: str) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.levelno == logging.WARNING and needle in r.getMessage()]


async def test_full_lmdb_node_keeps_serving_and_stores_again(nursery, tmp_path, caplog) -> None:
    caplog.set_level(logging.WARNING, logger="wa_relay")
    (config,) = make_configs(1, storage="lmdb", data_dir=tmp_path)
    config = dataclasses.replace(config, storage=f"{config.storage}?map_size=3MiB")
    cluster = Cluster(nursery, [config])
    alice = device_homed_at(cluster.ring, "n1")
    bob = device_homed_at(cluster.ring, "n1")
    url = cluster.url("n1")
    bodies: list[bytes] = []
    with trio.fail_after(30):
        await cluster.start("n1")
        await publish(url, alice)
        await publish(url, bob)
        async with session(url, alice) as a:
            for i in range(100):
                body = os.urandom(BODY)
                answer = await a.request(Send(id=10 + i, msg_id=os.urandom(16),
                                              recipients=[bob.recipient(body)]))
                if isinstance(answer, Error):
                    assert answer.code == "storage_full"
                    break
                assert isinstance(answer, Sent) and answer.status == "stored"
                bodies.append(body)
            else:
                raise AssertionError("the 3 MiB map never filled up")
            assert len(bodies) >= 2, len(bodies)
            again = await a.request(Send(id=500, msg_id=os.urandom(16),
                                         recipients=[bob.recipient(b"x" * BODY)]))
            assert isinstance(again, Error) and again.code == "storage_full"
            (line,) = _warnings(caplog, "storage full")  # the second refusal is rate-limited
            assert "send x1" in line
        async with session(url, bob) as b:
            await b.send(Sync(id=2))
            got: list[DeliverItem] = []
            while True:
                frame = await b.recv()
                if isinstance(frame, Synced):
                    break
                assert isinstance(frame, Deliver)
                got.extend(frame.items)
            assert [d.envelope.body for d in got] == bodies
            await b.send(Ack(id=0, seq=got[-1].seq))
            async with session(url, alice) as a:
                sent = await a.request(Send(id=600, msg_id=os.urandom(16),
                                            recipients=[bob.recipient(b"after")]))
                assert isinstance(sent, Sent) and sent.status == "stored"
            frame = await b.recv()
            assert isinstance(frame, Deliver) and frame.items[0].envelope.body == b"after"


async def test_storage_full_log_is_rate_limited(caplog) -> None:
    caplog.set_level(logging.WARNING, logger="wa_relay")
    log = StorageFullLog(logging.getLogger("wa_relay.node.t"), interval=10.0)
    log.note("send", 100.0)
    log.note("send", 101.0)
    log.note("forward", 105.0)
    log.note("group_send", 109.9)
    assert _warnings(caplog, "storage full") == [
        "storage full: refused 1 request(s) since the last report (send x1)"]
    log.note("send", 110.0)
    assert _warnings(caplog, "storage full")[1] == (
        "storage full: refused 4 request(s) since the last report "
        "(forward x1, group_send x1, send x2)")


class _FullOnExpire(MemoryStorage):
    """Its first two expiry sweeps fail with StorageFull."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    async def expire(self, older_than: float) -> int:
        self.calls += 1
        if self.calls <= 2:
            raise StorageFull("disk full")
        return await super().expire(older_than)


async def test_expire_loop_survives_storage_errors(autojump_clock, caplog) -> None:
    caplog.set_level(logging.WARNING, logger="wa_relay")
    storage = _FullOnExpire()
    (config,) = make_configs(1)
    node = Node(config, storage, logging.getLogger("wa_relay.node.n1"))
    with trio.move_on_after(35):
        await node.expire_loop(interval=10.0)
    assert storage.calls == 4  # t = 0, 10, 20, 30: failures are retried next interval
    lines = _warnings(caplog, "expiry sweep failed")
    assert lines == ["expiry sweep failed (StorageFull: disk full); retrying in 10 s"] * 2
