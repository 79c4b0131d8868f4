"""A kill -9 of the new home, then of the old home, in the middle of one user's handoff
(``wa-relay serve`` processes on LMDB, 2 -> 3 nodes): the test watches the new home's
store (read-only, as ``wa-relay backup`` does) and kills a side once part of the
user's queue, not all of it, is there. After the restart the handoff resumes; the
new home holds every envelope exactly once, in seq order; the old homes hold nothing."""

from __future__ import annotations

import base64
import os
import signal
import time
from contextlib import ExitStack
from pathlib import Path

import lmdb
import trio

from relay.admin.reshape import prepare_local_reshape
from relay.config import load_cluster, load_node_config
from relay.config.cluster_files import init_cluster
from relay.config.ring import Ring
from relay.protocol.frames import Envelope
from relay.protocol.stored import decode_envelope, encode_envelope
from relay.testing import LoggedProcess
from storage import _lmdb_layout as L
from storage.lmdb import LmdbStorage, path_from_url

from .procs import HOST, free_base_port, subprocess_env, tool

DEADLINE = 90.0
ENVELOPES = 12_000  # about 12 handoff batches of 1 MiB: a window to kill in


def store_dir(data: Path, node_id: str) -> Path:
    return Path(path_from_url(load_node_config(data / node_id / "node.toml").storage)[0])


def queued(env: lmdb.Environment, user: str) -> int:
    """The user's device-0 queue length in a store another process writes (read-only)."""
    try:
        txn = env.begin()
    except lmdb.MapResizedError:  # the writer grew the map: adopt its size
        env.set_mapsize(0)
        txn = env.begin()
    with txn:
        devices = env.open_db(b"devices", txn=txn, create=False)
        return L.DevRec.unpack(txn.get(L.dev_key(user.encode(), 0), db=devices)).queue_len


def open_reader(path: Path) -> lmdb.Environment:
    return lmdb.open(str(path), readonly=True, lock=True, create=False,
                     max_dbs=len(L.DB_NAMES) + 2)


def kill_when_partial(env: lmdb.Environment, user: str, victim: LoggedProcess) -> int:
    """Poll (thread) until the new home holds part of ``user``'s queue, then SIGKILL
    ``victim``; the count seen. Raises AssertionError if no partial state showed."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        n = queued(env, user)
        if 0 < n < ENVELOPES:
            os.kill(victim.pid, signal.SIGKILL)
            return n
        assert n < ENVELOPES, "the whole queue arrived before the kill"
        time.sleep(0.001)
    raise AssertionError("the handoff did not start")


async def until_gone(env: lmdb.Environment, user: str) -> None:
    while queued(env, user):  # noqa: ASYNC110 - another process writes it: poll, bounded
        await trio.sleep(0.05)


def envelope(user: str, i: int) -> bytes:
    """Queued envelope number ``i`` (a new home checks each handed-over item is one)."""
    return encode_envelope(Envelope(msg_id=i.to_bytes(16, "big"), sender_user=user,
                                    sender_device=0, ts=int(time.time() * 1000), kind="olm",
                                    body=b"%06d" % i + bytes(994)))


def user_moving(old: Ring, new: Ring, src: str, dest: str) -> str:
    for _ in range(10_000):
        user = base64.b32encode(os.urandom(32)).decode().lower().rstrip("=")
        if old.home(user).id == src and new.home(user).id == dest:
            return user
    raise AssertionError("no such user id")


async def test_kill_9_of_the_new_then_the_old_home_mid_handoff(tmp_path) -> None:
    base = free_base_port(8)
    data = tmp_path / "data"
    procs: dict[str, LoggedProcess] = {}
    started: list[LoggedProcess] = []  # every node process, killed ones too (clean-up)

    def start(node_id: str) -> None:
        child = LoggedProcess([*tool("wa-relay"), "serve", "--config",
                               str(data / node_id / "node.toml")],
                              stdout_log=tmp_path / f"{node_id}.out",
                              stderr_log=tmp_path / f"{node_id}.err", env=subprocess_env(),
                              name=node_id)
        procs[node_id] = child
        started.append(child)
        assert child.next_ready(time.monotonic() + 30) is not None, child.stderr_tail()

    with trio.fail_after(DEADLINE), ExitStack() as stack:
        stack.callback(lambda: [p.kill(15) for p in started if p.running])
        init_cluster(data, 2, base, HOST, tls=False)
        assert prepare_local_reshape(data, 3, base, HOST, None, tls=False) == (2, 3)
        old = Ring(load_cluster(data / "cluster.toml.prev"))
        new = Ring(load_cluster(data / "cluster.toml"))
        users = {"n1": user_moving(old, new, "n1", "n3"), "n2": user_moving(old, new, "n2", "n3")}
        for node_id, user in users.items():  # a long queue at each old home
            async with LmdbStorage.open(store_dir(data, node_id)) as st:
                await st.enqueue([(user, 0, envelope(user, i)) for i in range(ENVELOPES)])
        start("n3")
        readers = {n: stack.enter_context(open_reader(store_dir(data, n)))
                   for n in ("n1", "n2", "n3")}

        # the new home dies with part of n1's user imported
        victim = procs.pop("n3")
        start("n1")
        seen = await trio.to_thread.run_sync(kill_when_partial, readers["n3"], users["n1"], victim)
        assert 0 < seen < ENVELOPES and victim.reap(10) == -signal.SIGKILL
        start("n3")
        await until_gone(readers["n1"], users["n1"])  # handed over after all

        # the old home dies with part of its user imported at the new home
        start("n2")
        victim = procs.pop("n2")
        seen = await trio.to_thread.run_sync(kill_when_partial, readers["n3"], users["n2"], victim)
        assert 0 < seen < ENVELOPES and victim.reap(10) == -signal.SIGKILL
        start("n2")
        await until_gone(readers["n2"], users["n2"])
        for env in readers.values():
            env.close()
        for node_id in list(procs):
            code, killed = procs.pop(node_id).stop(30)
            assert (code, killed) == (0, False), node_id

    async with LmdbStorage.open(store_dir(data, "n3")) as st:
        for user in users.values():  # every envelope once, in seq order
            items = await st.read_queue(user, 0, limit=2 * ENVELOPES)
            assert [i.seq for i in items] == list(range(1, ENVELOPES + 1))
            assert [decode_envelope(i.envelope).body[:6] for i in items] == [
                b"%06d" % i for i in range(ENVELOPES)]
    for node_id, user in users.items():
        async with LmdbStorage.open(store_dir(data, node_id)) as st:
            assert {r.kind for r in await st.export_user(user)} <= {"seq"}
