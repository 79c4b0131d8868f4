"""Storage faults under the outbox (issue 15, "a node never dies on ... a full disk"):
EIO on the commits of the sender's home while its outbox drains to a peer that came
back. Nothing acknowledged is lost or stored twice, and the node keeps running.
Two in-process nodes; n1 stores in LMDB with the writer's test-only fault hook."""

from __future__ import annotations

import errno
import os

import lmdb
import trio
from relay_harness import Cluster, device_homed_at, make_configs, publish, session

from relay.protocol.frames import Send, Sent
from relay.protocol.stored import decode_envelope
from storage.lmdb import LmdbStorage


class Faults:
    """Raises EIO at the next ``eio`` commits of n1's writer."""

    def __init__(self) -> None:
        self.eio = 0

    def __call__(self, point: str) -> None:
        if point == "commit" and self.eio:
            self.eio -= 1
            raise lmdb.Error("mdb_txn_commit", errno.EIO)


async def test_eio_while_the_outbox_drains_loses_nothing_and_keeps_the_node(nursery,
                                                                          tmp_path) -> None:
    faults = Faults()
    cluster = Cluster(nursery, make_configs(2))
    async with LmdbStorage.open(tmp_path / "n1", fault_hook=faults) as n1_storage:
        cluster.storages["n1"] = n1_storage
        await cluster.start_all()
        alice = device_homed_at(cluster.ring, "n1")
        bob = device_homed_at(cluster.ring, "n2")
        with trio.fail_after(30):
            await publish(cluster.url("n1"), alice)
            await publish(cluster.url("n2"), bob)
            cluster.stop("n2")
            bodies = [f"m{i}".encode() for i in range(5)]
            async with session(cluster.url("n1"), alice) as a:
                for i, body in enumerate(bodies):
                    answer = await a.request(Send(id=3 + i, msg_id=os.urandom(16),
                                                  recipients=[bob.recipient(body)]))
                    assert answer == Sent(id=3 + i, status="queued")
            faults.eio = 3  # the outbox's next commits fail: its delete after n2 stored
            await cluster.start("n2")
            n2 = cluster.storages["n2"]
            while await n1_storage.outbox_list() or faults.eio:  # noqa: ASYNC110 - poll, deadline above
                await trio.sleep(0.05)
            assert cluster.running("n1")
            items = await n2.read_queue(bob.user_id, 0)
            assert [decode_envelope(i.envelope).body for i in items] == bodies
        nursery.cancel_scope.cancel()
