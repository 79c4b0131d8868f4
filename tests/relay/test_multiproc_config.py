"""A node with several addresses (``urls`` in the cluster file), what its processes
need from their configuration, and LMDB's one-process lock."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import trio

from relay.config import ConfigError, init_cluster, load_cluster, load_node_config
from relay.config.cluster_files import format_cluster
from relay.config.ring import NodeInfo, Ring, ring_version
from relay.testing import child_env, free_base_port, tool
from storage import StorageInUse
from storage.lmdb import LmdbStorage

KEY = "A" * 43 + "="  # standard base64 of 32 zero bytes


def _cluster(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "cluster.toml"
    path.write_text(body)
    return path


def test_urls_parse_and_url_keeps_working(tmp_path) -> None:
    path = _cluster(tmp_path, f'''
[[node]]
id = "n1"
urls = ["ws://127.0.0.1:7400", "ws://127.0.0.1:7410"]
public_key = "{KEY}"

[[node]]
id = "n2"
url = "ws://127.0.0.1:7401"
public_key = "{KEY}"
''')
    n1, n2 = load_cluster(path)
    assert (n1.url, n1.urls) == ("ws://127.0.0.1:7400", ("ws://127.0.0.1:7400",
                                                          "ws://127.0.0.1:7410"))
    assert (n2.url, n2.urls) == ("ws://127.0.0.1:7401", ("ws://127.0.0.1:7401",))
    # Written back the same way; a one-address node keeps its old ring version.
    assert load_cluster(_cluster(tmp_path, format_cluster([n1, n2]))) == (n1, n2)
    assert 'urls = [' in format_cluster([n1]) and "urls" not in format_cluster([n2])
    plain = NodeInfo("n2", "ws://127.0.0.1:7401", n2.public_key)
    assert ring_version([plain]) == ring_version([n2])
    assert ring_version([n1]) != ring_version([NodeInfo(n1.id, n1.url, n1.public_key)])
    assert Ring([n1, n2]).home("u" * 52).id in ("n1", "n2")


@pytest.mark.parametrize(("entry", "error"), [
    ('public_key = "K"', "needs url"),
    ('urls = []\npublic_key = "K"', "at least one"),
    ('url = "ws://b:1"\nurls = ["ws://a:1", "ws://b:1"]\npublic_key = "K"', "first entry"),
    ('urls = ["ws://a:1", "ws://a:1"]\npublic_key = "K"', "twice"),
    ('urls = ["ws://a:1", "http://b:1"]\npublic_key = "K"', "ws://"),
])
def test_bad_urls_are_refused(tmp_path, entry: str, error: str) -> None:
    path = _cluster(tmp_path, '[[node]]\nid = "n1"\n' + entry.replace('"K"', f'"{KEY}"') + "\n")
    with pytest.raises(ConfigError, match=error):
        load_cluster(path)


def _two_addresses(tmp_path: Path, storage: str) -> Path:
    [node_toml] = init_cluster(tmp_path, 1, 7500)
    cluster = tmp_path / "cluster.toml"
    [n1] = load_cluster(cluster)
    cluster.write_text(format_cluster([NodeInfo(n1.id, n1.url, n1.public_key,
                                                (n1.url, "ws://127.0.0.1:7510"))]))
    node_toml.write_text(re.sub(r'storage = ".*"', f'storage = "{storage}"',
                                node_toml.read_text()))
    return node_toml


def test_a_node_with_several_addresses_needs_postgresql_with_notify(tmp_path) -> None:
    url = "postgresql:///wa?host=/run/pg&schema=n1"
    assert load_node_config(_two_addresses(tmp_path / "a", url)).storage == url + "&notify=true"
    kept = "postgresql://db1,db2/wa?notify=on"
    assert load_node_config(_two_addresses(tmp_path / "b", kept)).storage == kept
    with pytest.raises(ConfigError, match="serves one process only"):
        load_node_config(_two_addresses(tmp_path / "c", "lmdb://data"))
    with pytest.raises(ConfigError, match="needs notify=true"):
        load_node_config(_two_addresses(tmp_path / "d", "postgresql:///wa?notify=false"))
    cfg = load_node_config(_two_addresses(tmp_path / "e", url))
    assert (cfg.own_url(7510), cfg.own_url(7500), cfg.own_url(9)) == (
        "ws://127.0.0.1:7510", "ws://127.0.0.1:7500", "ws://127.0.0.1:7500")


async def test_lmdb_is_opened_by_one_storage_at_a_time(tmp_path) -> None:
    with trio.fail_after(10):
        async with LmdbStorage.open(tmp_path / "db") as st:
            await st.enqueue([("a" * 52, 0, b"x")])
            with pytest.raises(StorageInUse, match=r"in use by another process \(pid \d+\)"):
                async with LmdbStorage.open(tmp_path / "db"):
                    pass
        async with LmdbStorage.open(tmp_path / "db") as st:  # released at close
            assert len(await st.read_queue("a" * 52, 0)) == 1


def test_a_second_process_on_one_lmdb_exits_1(tmp_path) -> None:
    [node_toml] = init_cluster(tmp_path, 1, free_base_port(1), admin_base_port=0)
    argv = [*tool("wa-relay"), "serve", "--config", str(node_toml)]
    first = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL, env=child_env())
    try:
        assert first.stdout is not None
        assert first.stdout.readline().startswith(b"ready n1 ")  # holds the lock now
        second = subprocess.run(argv, capture_output=True, timeout=30, env=child_env(),
                                stdin=subprocess.DEVNULL, check=False)
        assert second.returncode == 1
        assert re.search(rb"storage error: the LMDB store '.*/n1/data' is in use by another "
                         rb"process \(pid %d\)" % first.pid, second.stderr), second.stderr
        assert first.poll() is None  # the first one serves on
    finally:
        first.terminate()
        first.wait(timeout=30)
        first.stdout.close()
