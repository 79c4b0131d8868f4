"""node.toml / cluster.toml loading, writing and init_cluster."""

from __future__ import annotations

import os
import stat

import pytest

from relay.config import ConfigError, init_cluster, load_cluster, load_node_config


def test_init_cluster_and_load(tmp_path) -> None:
    files = init_cluster(tmp_path / "c", nodes=3, base_port=7400)
    assert [f.parent.name for f in files] == ["n1", "n2", "n3"]
    cluster = load_cluster(tmp_path / "c" / "cluster.toml")
    assert [(n.id, n.url) for n in cluster] == [
        ("n1", "ws://127.0.0.1:7400"), ("n2", "ws://127.0.0.1:7401"), ("n3", "ws://127.0.0.1:7402"),
    ]
    cfg = load_node_config(files[1])
    assert cfg.id == "n2" and cfg.port == 7401 and cfg.host == "127.0.0.1"
    assert cfg.storage == f"lmdb://{(tmp_path / 'c' / 'n2' / 'data').resolve()}"
    assert cfg.storage.startswith("lmdb:///")
    assert cfg.log_file == (tmp_path / "c" / "n2" / "node.log").resolve()
    assert (cfg.queue_ttl, cfg.max_queue, cfg.max_frame) == (2592000, 10000, 1048576)
    assert bytes(cfg.signing_key.verify_key) == cluster[1].public_key
    key_file = tmp_path / "c" / "n2" / "node.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600 and len(key_file.read_bytes()) == 32


def test_init_cluster_is_idempotent(tmp_path) -> None:
    init_cluster(tmp_path, nodes=2, base_port=7500)
    before = (tmp_path / "cluster.toml").read_text()
    keys = [(tmp_path / f"n{i}" / "node.key").read_bytes() for i in (1, 2)]
    init_cluster(tmp_path, nodes=2, base_port=7500)
    assert (tmp_path / "cluster.toml").read_text() == before
    assert [(tmp_path / f"n{i}" / "node.key").read_bytes() for i in (1, 2)] == keys


def _write(path, text: str):
    path.write_text(text)
    return path


def test_defaults_and_relative_paths(tmp_path) -> None:
    init_cluster(tmp_path / "c", nodes=1, base_port=7600)
    node = _write(tmp_path / "c" / "n1" / "node.toml",
                  'id = "n1"\nport = 0\ncluster = "../cluster.toml"\nkey_file = "node.key"\n'
                  'storage = "memory://"\n')
    cfg = load_node_config(node)
    assert cfg.port == 0 and cfg.log_file is None and cfg.max_queue == 10000
    assert cfg.link_ttl == 120.0
    base = node.read_text()
    _write(node, base + "link_ttl = 30\n")
    assert load_node_config(node).link_ttl == 30.0
    _write(node, base + "link_ttl = 0\n")
    with pytest.raises(ConfigError, match="link_ttl"):
        load_node_config(node)


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ('id = "n1"\n', "missing field 'port'"),
        ('id = "n1"\nport = "x"\n', "'port' must be an integer"),
        ('id = "n9"\nport = 1\ncluster = "../cluster.toml"\nkey_file = "node.key"\nstorage = "memory://"\n',
         "not in the cluster"),
        ('id = "n1"\nport = 1\ncluster = "../nope.toml"\nkey_file = "node.key"\nstorage = "memory://"\n',
         "file not found"),
        ('id = "n1"\nport = 1\ncluster = "../cluster.toml"\nkey_file = "node.key"\nstorage = "memory://"\n'
         'max_queue = 0\n', "must be > 0"),
        ("id = \n", "invalid TOML"),
    ],
)
def test_bad_node_config(tmp_path, text: str, needle: str) -> None:
    init_cluster(tmp_path / "c", nodes=1, base_port=7600)
    node = _write(tmp_path / "c" / "n1" / "node.toml", text)
    with pytest.raises(ConfigError, match=needle):
        load_node_config(node)


def test_key_mismatch_and_permissions(tmp_path) -> None:
    files = init_cluster(tmp_path, nodes=2, base_port=7700)
    k1, k2 = tmp_path / "n1" / "node.key", tmp_path / "n2" / "node.key"
    k1.write_bytes(k2.read_bytes())
    with pytest.raises(ConfigError, match="does not match"):
        load_node_config(files[0])
    os.chmod(k1, 0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        load_node_config(files[0])


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("", "at least one"),
        ('[[node]]\nid = "n1"\nurl = "http://x"\npublic_key = "AAAA"\n', "ws://"),
        ('[[node]]\nid = "n1"\nurl = "ws://x"\npublic_key = "!!"\n', "base64"),
        ('[[node]]\nid = "n1"\nurl = "ws://x"\npublic_key = "AAAA"\n', "32 bytes"),
        ('[[node]]\nid = "n1"\nurl = "ws://x"\npublic_key = "' + "A" * 43 + '="\n'
         '[[node]]\nid = "n1"\nurl = "ws://y"\npublic_key = "' + "A" * 43 + '="\n', "duplicate"),
    ],
)
def test_bad_cluster(tmp_path, text: str, needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        load_cluster(_write(tmp_path / "cluster.toml", text))


def test_admission_settings(tmp_path) -> None:
    init_cluster(tmp_path / "c", nodes=1, base_port=7600)
    node = tmp_path / "c" / "n1" / "node.toml"
    base = node.read_text()
    cfg = load_node_config(node)
    assert (cfg.handshake_timeout, cfg.max_pending_per_ip, cfg.max_connections) == (10.0, 64, 10000)
    _write(node, base + "handshake_timeout = 2.5\nmax_pending_per_ip = 8\nmax_connections = 100\n")
    cfg = load_node_config(node)
    assert (cfg.handshake_timeout, cfg.max_pending_per_ip, cfg.max_connections) == (2.5, 8, 100)
    assert cfg.max_mailboxes_per_ip == 8
    _write(node, base + "max_mailboxes_per_ip = 2\n")
    assert load_node_config(node).max_mailboxes_per_ip == 2
    for bad in ("handshake_timeout = 0", "max_pending_per_ip = 0", "max_connections = -1",
                'max_connections = "many"', "max_mailboxes_per_ip = 0"):
        _write(node, base + bad + "\n")
        with pytest.raises(ConfigError, match=bad.split()[0]):
            load_node_config(node)
