"""relay.testing: the in-process cluster launcher, free ports, logged child processes."""

from __future__ import annotations

import signal
import sys
import time

import pytest
import trio
from relay_harness import device_homed_at, publish, session

from relay.protocol.frames import Devices, GetDevices, Ok
from relay.testing import (
    LoggedProcess,
    free_base_port,
    node_configs,
    open_local_cluster,
    port_is_free,
)


async def test_an_lmdb_node_keeps_its_data_across_a_restart(tmp_path) -> None:
    with trio.fail_after(20):
        async with open_local_cluster(2, storage="lmdb", data_dir=tmp_path) as cluster:
            assert sorted(cluster.urls) == ["n1", "n2"] and cluster.storages == {}
            assert cluster.data_dir("n1") == (tmp_path / "n1").absolute()
            alice = device_homed_at(cluster.ring, "n1")
            assert cluster.home_of(alice.user_id) == "n1"
            assert await publish(cluster.url("n1"), alice) == Ok(id=2)
            cluster.stop("n1")
            assert not cluster.running("n1") and cluster.running("n2")
            await cluster.start("n1")  # waits until the first run closed its LMDB
            async with session(cluster.url("n1"), alice) as c:
                assert isinstance(await c.request(GetDevices(id=3, user_id=alice.user_id)), Devices)


async def test_memory_nodes_keep_their_storage_object_across_a_restart() -> None:
    with trio.fail_after(10):
        async with open_local_cluster(1, max_queue=3) as cluster:
            assert cluster.config("n1").max_queue == 3
            storage = cluster.storages["n1"]
            cluster.stop("n1")
            await cluster.start("n1")
            assert cluster.storages["n1"] is storage
            with pytest.raises(ValueError, match="no data directory"):
                cluster.data_dir("n1")


def test_node_configs_checks_the_storage_kind() -> None:
    with pytest.raises(ValueError, match="needs a data_dir"):
        node_configs(1, storage="lmdb")
    with pytest.raises(ValueError, match="'memory' or 'lmdb'"):
        node_configs(1, storage="redis")
    configs = node_configs(3)
    assert [c.id for c in configs] == ["n1", "n2", "n3"]
    assert len({c.port for c in configs}) == 3
    assert all(c.cluster == configs[0].cluster and c.storage == "memory://" for c in configs)


def test_free_base_port_gives_a_free_range() -> None:
    base = free_base_port(3)
    assert all(port_is_free(base + i) for i in range(3))


def test_logged_process_reads_ready_lines_and_logs_stdout(tmp_path) -> None:
    script = ("import sys; print('starting'); print('ready n1 ws://127.0.0.1:1'); "
              "print('ready n2 ws://127.0.0.1:2'); print('oops', file=sys.stderr)")
    child = LoggedProcess([sys.executable, "-c", script], stdout_log=tmp_path / "out",
                          stderr_log=tmp_path / "err", name="t")
    try:
        deadline = time.monotonic() + 20
        assert child.next_ready(deadline) == ("n1", "ws://127.0.0.1:1")
        assert child.next_ready(deadline) == ("n2", "ws://127.0.0.1:2")
        assert child.next_ready(deadline) is None  # stdout closed: the child exited
    finally:
        assert child.stop(10) == (0, False)
    assert (tmp_path / "out").read_text().splitlines() == [
        "starting", "ready n1 ws://127.0.0.1:1", "ready n2 ws://127.0.0.1:2"]
    assert child.stderr_tail() == "oops\n"


def test_logged_process_stop_ends_a_child_that_never_gets_ready(tmp_path) -> None:
    child = LoggedProcess([sys.executable, "-c", "import time; time.sleep(60)"],
                          stdout_log=tmp_path / "out", stderr_log=tmp_path / "err")
    try:
        assert child.next_ready(time.monotonic() + 0.2) is None and child.running
    finally:
        code, killed = child.stop(10)
    assert (code, killed) == (-signal.SIGTERM, False) and not child.running
