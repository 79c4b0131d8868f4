"""One home node served by two relay processes over one PostgreSQL database, on
loopback: ``n1`` has two addresses (``urls`` in the cluster file), one ``wa-relay
serve`` process each, both on one schema; ``n2`` is a one-process LMDB node.

Alice (homed on n1) has two devices, each a real ``wa-cli recv --follow`` process,
one connected to each process of n1; bob (homed on n2) sends. A message that
reaches one process of n1 wakes the device connected to the other at once
(LISTEN/NOTIFY); a kill -9 of one process during a send burst loses no
acknowledged message, shows none twice or out of order, and the device that was
on the dead process reconnects to the other address.
"""

from __future__ import annotations

import time
from contextlib import ExitStack
from pathlib import Path

import pytest
import trio

from cli.client import Message, init_account, open_client
from cli.errors import ConnectionFailed, ConnectionLost, RelayError
from cli.features.linking import link_device
from cli.session.state import State, create_state, open_state
from relay.config import load_cluster
from relay.config.ring import Ring
from relay.testing import ProcessCluster
from storage.testing.postgres_server import LocalPostgres

from .devices import Device, RecvProcess

DEADLINE = 40  # seconds for the whole test (it takes ~15 s)
BURST = 60  # messages in the send burst
KILL_AT = 20  # the process dies after this many acknowledged messages of the burst


def account_on(root: Path, name: str, ring: Ring, node_id: str, url: str,
               stack: ExitStack) -> State:
    """A fresh primary device homed on ``node_id`` (its relay URL ``url``), kept open."""
    for i in range(64):
        state = stack.enter_context(create_state(root / f"{name}-{i}", name=name, relay_url=url))
        if ring.home(state.user_id).id == node_id:
            init_account(state)
            state.prefs.receipts = state.prefs.hold_requests = False  # counts texts of strangers
            state.save()
            return state
    raise AssertionError(f"no account landed on {node_id}")


def texts(recv: RecvProcess, want: set[str], timeout: float) -> list[str]:
    """Read ``recv``'s lines (blocking) until every text of ``want`` was printed;
    return the texts printed (``m...`` messages only), in order."""
    got: list[str] = []
    end = time.monotonic() + timeout
    while not want <= set(got):
        line = recv.line(timeout=max(end - time.monotonic(), 0.01))
        if str(line.get("text", "")).startswith("m"):
            got.append(line["text"])
    return got


@pytest.fixture
def home(tmp_path: Path, postgres_db: str):
    cluster = ProcessCluster(
        tmp_path / "cluster", 2, processes={"n1": 2},
        storage_url=lambda node_id: (f"{postgres_db}&schema=mp_{node_id}&retry_for=10"
                                     if node_id == "n1" else "lmdb://data"))
    try:
        cluster.start_all()
        yield cluster
    finally:
        cluster.stop_all()


async def test_two_processes_one_home_kill_one_during_a_burst(home: ProcessCluster,
                                                              tmp_path: Path) -> None:
    a_url, b_url = home.urls["n1"]
    ring = Ring(load_cluster(home.cluster_file))
    with trio.fail_after(DEADLINE):
        with ExitStack() as stack:
            alice = account_on(tmp_path, "alice", ring, "n1", a_url, stack)
            bob = account_on(tmp_path, "bob", ring, "n2", home.urls["n2"][0], stack)
            async with open_client(alice) as client:
                await link_device(client, tmp_path / "alice-laptop", "laptop", history=False)
            assert alice.relay_urls == [a_url, b_url]  # auth_ok lists the home's addresses
            alice_id = alice.user_id
        with open_state(tmp_path / "alice-laptop") as laptop:  # the second device: on B
            laptop.relay_url = b_url
            laptop.prefs.receipts = laptop.prefs.hold_requests = False  # counts bob's texts
            laptop.save()
        phone = Device(alice.home).start_recv("--follow")
        pc = Device(tmp_path / "alice-laptop").start_recv("--follow")
        recvs = [phone, pc]
        try:
            with open_state(bob.home) as bob:
                async with open_client(bob) as sender:
                    # Both devices connected and live: n2's link reaches process A first,
                    # so the laptop (on B) gets each message through a notification.
                    await sender.send_text(alice_id, "m-first")
                    for r in recvs:
                        await trio.to_thread.run_sync(texts, r, {"m-first"}, 20)
                    start = trio.current_time()
                    await sender.send_text(alice_id, "m-wake")
                    assert await trio.to_thread.run_sync(texts, pc, {"m-wake"}, 5) == ["m-wake"]
                    assert trio.current_time() - start < 2  # at once, not by a poll

                    acked: list[str] = []
                    statuses: set[str] = set()
                    for n in range(BURST):
                        text = f"m{n:03d}"
                        result = await sender.send_text(alice_id, text)
                        statuses.add(result.status)
                        acked.append(text)
                        if len(acked) == KILL_AT:
                            assert home.kill("n1", 0) == -9  # process A, the phone's
            assert statuses <= {"stored", "queued"}
            want = set(acked)
            shown = {}
            for name, r in (("phone", phone), ("laptop", pc)):
                got = [t for t in await trio.to_thread.run_sync(texts, r, want, 25)
                       if t[1:].isdigit()]
                assert len(got) == len(set(got)), f"{name} showed a message twice"
                assert got == sorted(got), f"{name} showed messages out of order"
                assert want <= set(got)
                shown[name] = got
            assert home.procs[("n1", 1)].running and home.procs[("n2", 0)].running
        finally:
            for r in recvs:
                r.proc.send_signal(2)  # SIGINT: recv --follow stops quietly
            results = [await trio.to_thread.run_sync(r.finish) for r in recvs]
        assert [code for code, _, _ in results] == [0, 0], results
        with open_state(alice.home) as phone_state:
            assert phone_state.relay_url == b_url  # reconnected to the other address


COUNT = 80  # messages sent across the database restart
RESTART_AT = 25  # acknowledged messages before the restart begins


async def received(state: State, want: set[str], seconds: float) -> list[str]:
    """Connect ``state`` and collect message texts until every one of ``want`` came
    (backlog and live); raise TooSlowError after ``seconds``."""
    got: list[str] = []
    with trio.fail_after(seconds):
        async with open_client(state) as client:
            async for event in client.receive():
                if isinstance(event, Message):
                    got.append(event.text)
                    if want <= set(got):
                        return got
    raise AssertionError("the connection ended")


async def test_database_restart_during_traffic(tmp_path: Path, postgres_server) -> None:
    """Two processes of n1 over a server of their own, restarted (crash, WAL
    recovery) while bob sends: each send is answered or fails (a short
    ``retry_for``, so some do fail with ``storage_unavailable``), the relays live on
    and reconnect, and every acknowledged message reaches alice once, in order."""
    server = await trio.to_thread.run_sync(LocalPostgres.start)
    db = await trio.to_thread.run_sync(server.create_database, "mprestart")
    cluster = ProcessCluster(tmp_path / "cluster", 1, processes={"n1": 2},
                             storage_url=lambda node_id: server.url(db, schema="n1",
                                                                    retry_for="0.5"))
    try:
        await trio.to_thread.run_sync(cluster.start_all)
        a_url, b_url = cluster.urls["n1"]
        ring = Ring(load_cluster(cluster.cluster_file))
        with trio.fail_after(DEADLINE), ExitStack() as stack:
            bob = account_on(tmp_path, "bob", ring, "n1", a_url, stack)
            alice = account_on(tmp_path, "alice", ring, "n1", b_url, stack)
            async with open_client(alice):
                pass  # published
            acked: list[str] = []
            failed: list[tuple[str, str]] = []
            restarted = trio.Event()
            after = 0  # sends answered after the server was back

            async def restart() -> None:
                await trio.to_thread.run_sync(server.restart)
                restarted.set()

            def more() -> bool:
                return n < COUNT or after < 10

            async with trio.open_nursery() as nursery:
                n = 0
                while more():
                    try:
                        async with open_client(bob) as sender:
                            while more():
                                text = f"r{n:03d}"
                                n += 1
                                try:
                                    await sender.send_text(alice.user_id, text)
                                except RelayError as exc:
                                    failed.append((text, exc.code))
                                    continue
                                finally:
                                    after += restarted.is_set()
                                acked.append(text)
                                if len(acked) == RESTART_AT:
                                    nursery.start_soon(restart)
                    except (ConnectionLost, ConnectionFailed) as exc:  # NoAnswer too
                        failed.append((text, type(exc).__name__))
            assert restarted.is_set() and len(acked) >= RESTART_AT + 10, failed
            assert {code for _, code in failed} <= {"storage_unavailable", "NoAnswer",
                                                    "ConnectionLost", "ConnectionFailed"}
            assert cluster.dead() == {}  # both relays lived through it
            got = [t for t in await received(alice, set(acked), 20) if t.startswith("r")]
            assert len(got) == len(set(got)) and got == sorted(got)
            # Live again: a message from A wakes alice's connection on B.
            async with trio.open_nursery() as nursery:
                nursery.start_soon(received, alice, {"after"}, 15)
                async with open_client(bob) as sender:
                    await sender.send_text(alice.user_id, "after")
    finally:
        await trio.to_thread.run_sync(cluster.stop_all)
        await trio.to_thread.run_sync(server.stop)
