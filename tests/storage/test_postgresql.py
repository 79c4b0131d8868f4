"""The PostgreSQL backend: the shared conformance suite, then what only a shared
database has: claims from several processes, connections killed mid-batch, the
commit token, migrations, URLs."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import textwrap
from contextlib import AbstractAsyncContextManager
from functools import partial
from pathlib import Path

import psycopg
import pytest
import trio
from click.testing import CliRunner

from relay.__main__ import main as relay_main
from relay.config.cluster_files import init_cluster
from storage import QueueFull, Storage, StorageUnavailable, open_storage
from storage.postgresql import SCHEMA_VERSION, Changes, PostgresStorage, SchemaError, split_url
from storage.testing import ALICE, BOB, StorageConformance
from storage.testing.postgres_server import LocalPostgres


class TestPostgresStorage(StorageConformance):
    reopen_supported = True

    @pytest.fixture(autouse=True)
    def _pg(self, postgres_db: str, request: pytest.FixtureRequest) -> None:
        self.pg_url = postgres_db
        self.pg_schema = "t_" + hashlib.sha256(request.node.nodeid.encode()).hexdigest()[:16]

    def make_storage(self) -> AbstractAsyncContextManager[Storage]:
        return PostgresStorage.from_url(f"{self.pg_url}&schema={self.pg_schema}")

    def make_small_storage(self) -> AbstractAsyncContextManager[Storage]:
        return PostgresStorage.from_url(
            f"{self.pg_url}&schema={self.pg_schema}_small&max_bytes=262144")


# -- helpers

T0 = 1_800_000_000.0
ROOT = Path(__file__).resolve().parents[2]


def _schema(request: pytest.FixtureRequest) -> str:
    return "x_" + hashlib.sha256(request.node.nodeid.encode()).hexdigest()[:16]


@pytest.fixture
def pg(postgres_db: str, request: pytest.FixtureRequest) -> tuple[str, str]:
    """``(conninfo, schema)`` of a fresh schema; connections named after the test."""
    schema = _schema(request)
    conninfo, _ = split_url(f"{postgres_db}&application_name={schema}")
    return conninfo, schema


def _terminate(conninfo: str, *, pid: int | None = None, app: str | None = None) -> int:
    """Kill backends (by pid, or every one of application ``app``) from another
    connection; return how many."""
    with psycopg.connect(conninfo, autocommit=True, application_name="killer") as conn:
        if pid is not None:
            rows = conn.execute("SELECT pg_terminate_backend(%s)", (pid,)).fetchall()
        else:
            rows = conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE application_name = %s AND pid <> pg_backend_pid()", (app,)).fetchall()
    return sum(1 for (ok,) in rows if ok)


def _keys(n: int) -> list[tuple[str, bytes]]:
    return [(f"k{i:05d}", b"pub-%d" % i) for i in range(n)]


# -- concurrent claims: several writers (threads) and several processes


async def test_claims_from_several_storages_never_hand_a_key_out_twice(pg) -> None:
    conninfo, schema = pg
    with trio.fail_after(60):
        async with PostgresStorage.open(conninfo, schema=schema) as st:
            await st.add_one_time_keys(ALICE, 0, _keys(400))
            await st.set_fallback_key(ALICE, 0, "fb", b"fallback")
        got: list[list[str]] = [[] for _ in range(4)]

        async def claimer(k: int) -> None:
            # Each storage has its own pool and writer thread: real contention in the DB.
            async with PostgresStorage.open(conninfo, schema=schema) as mine:
                while True:
                    answers = await mine.claim_keys([(ALICE, 0)] * 7)
                    for a in answers:
                        assert a is not None
                        if a[2]:
                            return
                        got[k].append(a[0])

        async with trio.open_nursery() as nursery:
            for k in range(4):
                nursery.start_soon(claimer, k)
    claimed = [key for ids in got for key in ids]
    assert sorted(claimed) == [k for k, _ in _keys(400)]  # each key exactly once
    assert sum(1 for ids in got if ids) >= 2  # the claims really overlapped


async def test_claims_from_several_processes_never_hand_a_key_out_twice(pg) -> None:
    conninfo, schema = pg
    with trio.fail_after(60):
        async with PostgresStorage.open(conninfo, schema=schema) as st:
            await st.add_one_time_keys(ALICE, 0, _keys(600))
        child = textwrap.dedent(f"""
            import json, trio
            from storage.postgresql import PostgresStorage
            async def main():
                async with PostgresStorage.open({conninfo!r}, schema={schema!r}) as st:
                    got = []
                    while True:
                        for a in await st.claim_keys([({ALICE!r}, 0)] * 5):
                            if a is None:
                                print(json.dumps(got))
                                return
                            got.append(a[0])
            trio.run(main)
        """)
        results: list[bytes] = []

        async def run_child() -> None:
            proc = await trio.run_process([sys.executable, "-c", child], capture_stdout=True,
                                          cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
            results.append(proc.stdout)

        async with trio.open_nursery() as nursery:
            for _ in range(3):
                nursery.start_soon(run_child)
    claimed = [key for out in results for key in json.loads(out)]
    assert len(results) == 3
    assert sorted(claimed) == [k for k, _ in _keys(600)]


# -- connections lost in the middle of a batch


async def test_connection_killed_before_commit_is_retried_once(pg) -> None:
    conninfo, schema = pg
    killed: list[int] = []

    def hook(stage: str, conn: psycopg.Connection) -> None:
        if stage == "commit" and not killed:
            killed.append(conn.info.backend_pid)
            assert _terminate(conninfo, pid=conn.info.backend_pid) == 1

    with trio.fail_after(30):
        async with PostgresStorage.open(conninfo, schema=schema, fault_hook=hook) as st:
            seqs: list[int] = []

            async def send(n: int) -> None:
                seqs.extend(await st.enqueue([(ALICE, 0, b"m%d" % n)], now=T0) or [])

            async with trio.open_nursery() as nursery:
                for n in range(50):
                    nursery.start_soon(send, n)
            assert killed and st.writer.retries >= 1 and st.writer.resolved_by_token == 0
            assert sorted(seqs) == list(range(1, 51))
            items = await st.read_queue(ALICE, 0, limit=100)
            assert sorted(i.envelope for i in items) == sorted(b"m%d" % n for n in range(50))
            assert [i.seq for i in items] == list(range(1, 51))


async def test_commit_lost_after_it_landed_is_not_applied_twice(pg) -> None:
    """The reply to COMMIT is lost although the transaction committed: the retry's
    commit token shows it landed, so the answers stand and nothing is stored twice."""
    conninfo, schema = pg
    lost: list[int] = []

    def hook(stage: str, conn: psycopg.Connection) -> None:
        if stage == "committed" and not lost:
            lost.append(conn.info.backend_pid)
            _terminate(conninfo, pid=conn.info.backend_pid)
            raise psycopg.OperationalError("the reply to COMMIT was lost")

    with trio.fail_after(30):
        async with PostgresStorage.open(conninfo, schema=schema, fault_hook=hook) as st:
            await st.add_one_time_keys(BOB, 0, _keys(3))  # first batch: its reply is lost
            assert st.writer.resolved_by_token == 1
            seqs = await st.enqueue([(ALICE, 0, b"a"), (ALICE, 0, b"b")], now=T0)
            claimed = await st.claim_keys([(BOB, 0), (BOB, 0)])
            assert seqs == [1, 2]
            assert [c[0] for c in claimed if c] == ["k00000", "k00001"]
            assert await st.count_one_time_keys(BOB, 0) == 1  # added once, not twice


async def test_backends_killed_during_traffic_lose_no_acknowledged_envelope(pg) -> None:
    conninfo, schema = pg
    with trio.fail_after(60):
        async with PostgresStorage.open(conninfo, schema=schema, retry_for=20) as st:
            acked: dict[bytes, int] = {}
            refused: list[bytes] = []

            async def sender(k: int) -> None:
                for n in range(40):
                    env = b"s%d-%d" % (k, n)
                    try:
                        [seq] = await st.enqueue([(ALICE, 0, env)]) or [0]
                    except StorageUnavailable:
                        refused.append(env)
                    else:
                        acked[env] = seq

            kills = 0
            async with trio.open_nursery() as nursery:
                for k in range(20):
                    nursery.start_soon(sender, k)
                for _ in range(12):  # a kill every 50 ms while the senders run
                    if len(acked) + len(refused) >= 800:
                        break
                    kills += await trio.to_thread.run_sync(partial(_terminate, conninfo, app=schema))
                    await trio.sleep(0.05)
            assert kills >= 2 and st.writer.retries >= 1
            items = await st.read_queue(ALICE, 0, limit=2000)
            stored = [i.envelope for i in items]
            assert len(stored) == len(set(stored))  # nothing stored twice
            assert {i.envelope: i.seq for i in items if i.envelope in acked} == acked
            assert set(acked) <= set(stored)  # every acknowledged envelope is there
            assert [i.seq for i in items] == list(range(1, len(items) + 1))


async def test_server_unreachable_is_storage_unavailable() -> None:
    with trio.fail_after(20), pytest.raises(StorageUnavailable):
        async with PostgresStorage.open("host=/nonexistent-wa-relay-socket user=wa",
                                        connect_timeout=2):
            pass


# -- schema and migrations


async def test_migrations_refuse_a_newer_or_unmigrated_schema(pg) -> None:
    conninfo, schema = pg
    with trio.fail_after(30):
        with pytest.raises(SchemaError, match="wa-relay storage migrate"):
            async with PostgresStorage.open(conninfo, schema=schema, migrate=False):
                pass
        version, applied = await PostgresStorage.migrate_url(
            f"{conninfo}&schema={schema}")
        assert (version, applied) == (SCHEMA_VERSION, [
            "1 queues, key directory, outbox, media",
            "2 queue byte accounting, correspondents, invites", "3 handoff marks",
            "4 dedupe ids linked to their users", "5 watcher refresh times"])
        assert await PostgresStorage.migrate_url(
            f"{conninfo}&schema={schema}") == (SCHEMA_VERSION, [])
        async with PostgresStorage.open(conninfo, schema=schema, migrate=False) as st:
            assert await st.enqueue([(ALICE, 0, b"x")], now=T0) == [1]
        with psycopg.connect(conninfo, autocommit=True) as conn:
            conn.execute(f"INSERT INTO {schema}.wa_schema (version, name) VALUES (999, 'future')")
        with pytest.raises(SchemaError, match="newer"):
            async with PostgresStorage.open(conninfo, schema=schema):
                pass


def test_storage_migrate_command(tmp_path: Path, postgres_db: str,
                                 request: pytest.FixtureRequest) -> None:
    [node_toml, _] = init_cluster(tmp_path, 2, 7900)
    url = f"{postgres_db}&schema={_schema(request)}"
    text = node_toml.read_text()
    node_toml.write_text(re.sub(r'storage = ".*"', f'storage = "{url}"', text))
    runner = CliRunner()
    first = runner.invoke(relay_main, ["storage", "migrate", "--config", str(node_toml)])
    assert first.exit_code == 0, first.output
    assert first.output.splitlines() == [
        "applied 1 queues, key directory, outbox, media",
        "applied 2 queue byte accounting, correspondents, invites", "applied 3 handoff marks",
        "applied 4 dedupe ids linked to their users", "applied 5 watcher refresh times",
        f"schema at version {SCHEMA_VERSION}"]
    again = runner.invoke(relay_main, ["storage", "migrate", "--config", str(node_toml)])
    assert (again.exit_code, again.output) == (0, f"schema at version {SCHEMA_VERSION}\n")
    lmdb_node = tmp_path / "n2" / "node.toml"
    result = runner.invoke(relay_main, ["storage", "migrate", "--config", str(lmdb_node)])
    assert (result.exit_code, result.output) == (0, "lmdb:// storage has no schema: nothing to migrate\n")
    node_toml.write_text(re.sub(r'storage = ".*"', 'storage = "postgresql:///x?host=/nonexistent&connect_timeout=1"', text))
    failed = runner.invoke(relay_main, ["storage", "migrate", "--config", str(node_toml)])
    assert failed.exit_code == 1 and "migration failed" in failed.output


# -- URLs


async def test_urls_and_the_registry(postgres_db: str, request: pytest.FixtureRequest) -> None:
    assert split_url("postgresql://u:p@h1:5432,h2:5433/db?target_session_attrs=read-write"
                     "&schema=n1&pool_max=4") == (
        "postgresql://u:p@h1:5432,h2:5433/db?target_session_attrs=read-write",
        {"schema": "n1", "pool_max": "4"})
    assert split_url("postgres:///db?host=%2Frun%2Fpg") == ("postgresql:///db?host=%2Frun%2Fpg", {})
    for bad in ("lmdb:///x", "postgresql:///db?schema=a&schema=b"):
        with pytest.raises(ValueError):
            split_url(bad)
    with trio.fail_after(30):
        schema = _schema(request)
        for scheme in ("postgresql", "postgres"):
            url = postgres_db.replace("postgresql:", f"{scheme}:", 1)
            async with open_storage(f"{url}&schema={schema}&pool_max=3&max_bytes=1M") as st:
                assert isinstance(st, PostgresStorage) and st.schema == schema
                assert st.writer._limit == 1 << 20
        for opts in ("schema=no-dashes", "pool_max=1", "migrate=maybe"):
            with pytest.raises(ValueError):
                async with open_storage(f"{postgres_db}&{opts}"):
                    pass


async def test_server_restart_during_traffic_gives_errors_or_successes_never_false_ones() -> None:
    """A crash-restart of the server (immediate stop, WAL recovery) while 10 tasks
    enqueue: each call returns its seqs or raises StorageUnavailable; afterwards
    every acknowledged envelope is stored, once, under its seq."""
    server = await trio.to_thread.run_sync(LocalPostgres.start)
    try:
        with trio.fail_after(90):
            async with PostgresStorage.open(server.conninfo(), retry_for=15) as st:
                acked: dict[bytes, int] = {}
                refused: list[bytes] = []
                restarted = trio.Event()
                fifty_answered = trio.Event()

                async def sender(k: int) -> None:
                    for n in range(30):
                        env = b"r%d-%d" % (k, n)
                        try:
                            [seq] = await st.enqueue([(ALICE, 0, env)]) or [0]
                        except StorageUnavailable:
                            refused.append(env)
                        else:
                            acked[env] = seq
                        if len(acked) + len(refused) >= 50:
                            fifty_answered.set()
                        if n == 10:
                            await restarted.wait()

                async with trio.open_nursery() as nursery:
                    for k in range(10):
                        nursery.start_soon(sender, k)
                    await fifty_answered.wait()
                    await trio.to_thread.run_sync(server.restart)
                    restarted.set()
                assert len(acked) + len(refused) == 300 and len(acked) >= 150
                assert st.writer.retries >= 1
                items = await st.read_queue(ALICE, 0, limit=1000)
                stored = [i.envelope for i in items]
                assert len(stored) == len(set(stored))
                assert {i.envelope: i.seq for i in items if i.envelope in acked} == acked
    finally:
        await trio.to_thread.run_sync(server.stop)


async def test_connections_that_land_on_a_read_only_server_are_replaced(
        pg, postgres_db: str) -> None:
    """Like a failover that left the pool on a standby: writes fail with 25006
    (read-only transaction), so the writer drops those connections; once the
    database is writable again, new connections serve the next batch."""
    conninfo, schema = pg
    dbname = postgres_db.split("///", 1)[1].split("?", 1)[0]
    admin = conninfo.replace(f"/{dbname}?", "/postgres?", 1)

    def set_read_only(on: bool) -> None:
        with psycopg.connect(admin, autocommit=True) as conn:
            action = "SET default_transaction_read_only = on" if on else "RESET ALL"
            conn.execute(f'ALTER DATABASE "{dbname}" {action}')
        if on:
            _terminate(conninfo, app=schema)  # the pool reconnects: to a "standby"

    with trio.fail_after(30):
        async with PostgresStorage.open(conninfo, schema=schema, retry_for=1) as st:
            assert await st.enqueue([(ALICE, 0, b"before")], now=T0) == [1]
            try:
                await trio.to_thread.run_sync(set_read_only, True)
                with pytest.raises(StorageUnavailable, match="read-only"):
                    await st.enqueue([(ALICE, 0, b"refused")], now=T0)
            finally:
                await trio.to_thread.run_sync(set_read_only, False)
            assert await st.enqueue([(ALICE, 0, b"after")], now=T0) == [2]
            assert [i.envelope for i in await st.read_queue(ALICE, 0)] == [b"before", b"after"]


# -- cross-process wake-ups (LISTEN/NOTIFY)


async def test_enqueues_in_one_storage_wake_watchers_of_another(pg) -> None:
    conninfo, schema = pg
    with trio.fail_after(30):
        async with PostgresStorage.open(conninfo, schema=schema, notify=True) as a, \
                PostgresStorage.open(conninfo, schema=schema, notify=True) as b:
            seen_by_b: list[set[tuple[str, int]] | None] = []
            seen_by_a: list[set[tuple[str, int]] | None] = []
            arrived = trio.Event()
            a_heard_b = trio.Event()

            def on_a(devices: set[tuple[str, int]] | None) -> None:
                seen_by_a.append(devices)
                if devices == {(BOB, 1)}:
                    a_heard_b.set()

            def on_b(devices: set[tuple[str, int]] | None) -> None:
                seen_by_b.append(devices)
                arrived.set()

            async with trio.open_nursery() as nursery:
                await nursery.start(b.serve_enqueue_watch, on_b)
                await nursery.start(a.serve_enqueue_watch, on_a)
                await a.enqueue([(ALICE, 0, b"x"), (BOB, 3, b"y"), (ALICE, 0, b"z")], now=T0)
                await arrived.wait()
                assert seen_by_b == [{(ALICE, 0), (BOB, 3)}]
                # A refused request sends nothing; B's own enqueues do not wake B.
                arrived = trio.Event()
                with pytest.raises(QueueFull):
                    await a.enqueue([(ALICE, 0, b"w")], max_queue=1, now=T0)
                await b.enqueue([(BOB, 1, b"from b")], now=T0)
                await a_heard_b.wait()
                # The listener connection is lost: B reconnects and says "maybe missed".
                await trio.to_thread.run_sync(partial(_terminate, conninfo, app=schema))
                await arrived.wait()
                assert seen_by_b[1] is None
                arrived = trio.Event()
                await a.enqueue([(BOB, 2, b"after")], now=T0)
                while seen_by_b[-1] != {(BOB, 2)}:
                    await arrived.wait()
                    arrived = trio.Event()
                nursery.cancel_scope.cancel()
            # A heard B's enqueue, never its own.
            assert all(s is None or (ALICE, 0) not in s for s in seen_by_a)


async def test_notifications_name_device_lists_and_outbox_destinations(pg) -> None:
    conninfo, schema = pg
    with trio.fail_after(30):
        async with PostgresStorage.open(conninfo, schema=schema, notify=True) as a, \
                PostgresStorage.open(conninfo, schema=schema, notify=True) as b:
            assert a.notifies
            heard: list[Changes | None] = []
            arrived = trio.Event()

            def on_b(changes: Changes | None) -> None:
                heard.append(changes)
                arrived.set()

            async with trio.open_nursery() as nursery:
                await nursery.start(b.serve_watch, on_b)
                await a.put_device_list(ALICE, 3, b"list v3")
                await arrived.wait()
                assert heard == [Changes(lists={ALICE})]
                arrived = trio.Event()
                await a.outbox_put_many([("n2", b"x"), ("odd,id|%", b"y")])
                await arrived.wait()
                assert heard[-1] == Changes(outbox={"n2", "odd,id|%"})
                nursery.cancel_scope.cancel()


async def test_enqueues_from_several_processes_keep_seqs_and_dedupe(pg) -> None:
    """Three processes enqueue the same 60 dedupe ids for one device at once (each
    starting at another third; all three have their first four in before any goes on,
    so that a process the scheduler starves on a loaded machine still takes part):
    each id is stored once, seqs are 1..60 without gaps, and each process's envelopes
    got increasing seqs in the order it sent them."""
    conninfo, schema = pg
    with trio.fail_after(60):
        async with PostgresStorage.open(conninfo, schema=schema):
            pass  # migrated once, before the children race
        child = textwrap.dedent(f"""
            import sys, trio
            from storage.postgresql import PostgresStorage
            async def main(k):
                async with PostgresStorage.open({conninfo!r}, schema={schema!r}) as st:
                    print("ready", flush=True)
                    sys.stdin.readline()  # all three start together
                    async def one(i):
                        await st.enqueue([({ALICE!r}, 0, b"%d-%02d" % (k, i))],
                                         dedupe=b"d%02d" % i)
                    # Each process starts at another third of the ids, four in flight
                    # (batches in the writer); they meet on the ids the others began with.
                    for r in range(0, 60, 4):
                        async with trio.open_nursery() as n:
                            for j in range(r, r + 4):
                                n.start_soon(one, (j + 20 * k) % 60)
                        if r == 0:  # each has its first round in before any goes on, so
                            print("first", flush=True)  # a starved one still takes part
                            sys.stdin.readline()
            trio.run(main, int(sys.argv[1]))
        """)

        async def each_says(word: bytes) -> None:
            for proc in procs:
                line = b""
                while not line.endswith(b"\n"):
                    chunk = await proc.stdout.receive_some(100)
                    assert chunk, f"a child exited before it said {word!r}"
                    line += chunk
                assert line == word + b"\n"

        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        procs = [await trio.lowlevel.open_process(
            [sys.executable, "-c", child, str(k)], cwd=ROOT, env=env,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE) for k in range(3)]
        try:
            await each_says(b"ready")
            for proc in procs:
                await proc.stdin.send_all(b"go\n")
            await each_says(b"first")
            for proc in procs:
                await proc.stdin.send_all(b"go\n")
            assert [await proc.wait() for proc in procs] == [0, 0, 0]
        finally:
            for proc in procs:
                if proc.returncode is None:
                    proc.kill()
                    await proc.wait()
                await proc.stdin.aclose()
                await proc.stdout.aclose()
        async with PostgresStorage.open(conninfo, schema=schema) as st:
            items = await st.read_queue(ALICE, 0, limit=1000)
    assert [i.seq for i in items] == list(range(1, 61))
    ids = [int(i.envelope.split(b"-")[1]) for i in items]
    assert sorted(ids) == list(range(60))  # each dedupe id stored once
    for k in range(3):
        mine = [i for i in items if i.envelope.startswith(b"%d-" % k)]
        rounds = [(int(i.envelope.split(b"-")[1]) - 20 * k) % 60 // 4 for i in mine]
        assert rounds == sorted(rounds)  # a process's later rounds got later seqs
        assert mine  # each was first on some ids: they really ran together


async def test_two_writers_with_mixed_batches_do_not_deadlock(pg) -> None:
    """Batches of enqueues and acks to the same devices, in opposite orders, from two
    storages at once: the writer locks each batch's counter rows in key order first,
    so neither ever waits for the other in a cycle (a deadlock would cost a retry
    after PostgreSQL's 1 s deadlock_timeout)."""
    from storage.postgresql import _ops as ops
    from storage.postgresql._errors import classify

    # (and a deadlock, were there one, is retried, not taken for a bug)
    assert classify(psycopg.errors.DeadlockDetected("x")) == "transient"
    conninfo, schema = pg
    devs = [(ALICE, 0), (ALICE, 1), (BOB, 0), (BOB, 1)]
    with trio.fail_after(60):
        async with PostgresStorage.open(conninfo, schema=schema) as a, \
                PostgresStorage.open(conninfo, schema=schema) as b:
            await a.enqueue([(u, d, b"first") for u, d in devs], now=T0)

            async def rounds(st: PostgresStorage, order: list[tuple[str, int]]) -> None:
                for _ in range(25):
                    batch: list = []
                    for u, d in order:  # enqueue, ack, enqueue, ack...: kinds alternate
                        batch += [ops.Enqueue([(u, d, b"x")], None, None, T0),
                                  ops.Ack(u, d, 1)]
                    await st.writer.submit_many(batch)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(rounds, a, devs)
                nursery.start_soon(rounds, b, devs[::-1])
            assert (a.writer.retries, b.writer.retries) == (0, 0)
            assert a.writer.commits + b.writer.commits == 51  # none split in halves
            for u, d in devs:
                assert await a.queue_length(u, d) == 50
