"""Issue 15, item 3 against real nodes: EIO on the commit of the recipient's home
(LMDB, a failing disk) is answered as a refusal (``storage_unavailable``) for the
operations it concerns; the sender's connection and the peer link between the two
nodes stay up (no 1011, no reconnect storm), and the next commit works again. Two
in-process nodes; n2 stores in LMDB with the writer's test-only fault hook."""

from __future__ import annotations

import errno
import logging
import os

import lmdb
import trio
from relay_harness import Cluster, device_homed_at, make_configs, publish, session

from relay.protocol.frames import Error, Send, Sent
from relay.protocol.stored import decode_envelope
from storage.lmdb import LmdbStorage


class Faults:
    """Raises the planned errors at the next commits of n2's writer."""

    def __init__(self) -> None:
        self.plan: list[lmdb.Error] = []

    def __call__(self, point: str) -> None:
        if point == "commit" and self.plan:
            raise self.plan.pop(0)


def _eio() -> lmdb.Error:
    return lmdb.Error("mdb_txn_commit", errno.EIO)


async def test_eio_on_commit_is_a_refusal_and_keeps_the_peer_link(nursery, tmp_path,
                                                                  caplog) -> None:
    caplog.set_level(logging.INFO, logger="wa_relay")
    faults = Faults()
    cluster = Cluster(nursery, make_configs(2))
    async with LmdbStorage.open(tmp_path / "n2", fault_hook=faults) as n2_storage:
        cluster.storages["n2"] = n2_storage
        await cluster.start_all()
        alice = device_homed_at(cluster.ring, "n1")
        bob = device_homed_at(cluster.ring, "n2")

        def lines(needle: str) -> list[str]:
            return [r.getMessage() for r in caplog.records if needle in r.getMessage()]

        with trio.fail_after(20):
            await publish(cluster.url("n1"), alice)
            await publish(cluster.url("n2"), bob)
            async with session(cluster.url("n1"), alice) as a:
                first = await a.request(Send(id=3, msg_id=os.urandom(16),
                                             recipients=[bob.recipient(b"one")]))
                assert first == Sent(id=3, status="stored")  # the link n1 -> n2 is up
                faults.plan = [_eio()]
                refused = await a.request(Send(id=4, msg_id=os.urandom(16),
                                               recipients=[bob.recipient(b"two")]))
                assert isinstance(refused, Error), refused
                assert refused.code == "storage_unavailable", refused
                again = await a.request(Send(id=5, msg_id=os.urandom(16),
                                             recipients=[bob.recipient(b"three")]))
                assert again == Sent(id=5, status="stored")  # same connection, same link
        items = await n2_storage.read_queue(bob.user_id, 0)
        assert [decode_envelope(i.envelope).body for i in items] == [b"one", b"three"]
        assert lines("peer link to n2 down") == [] and lines("peer link to n1 down") == []
        assert lines("unexpected error") == [] and lines("1011") == []
        assert len(lines("peer link to n2 up")) == 1
        nursery.cancel_scope.cancel()
