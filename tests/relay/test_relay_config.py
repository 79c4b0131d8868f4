"""node.toml / cluster.toml loading, writing and init_cluster."""

from __future__ import annotations

import os
import stat
import tomllib
from pathlib import Path

import msgspec
import pytest
import tomli_w

from relay.config import (
    NODE_SETTINGS,
    ConfigError,
    NodeFile,
    init_cluster,
    load_cluster,
    load_node_config,
)


def test_init_cluster_and_load(tmp_path) -> None:
    files = init_cluster(tmp_path / "c", nodes=3, base_port=7400)
    assert [f.parent.name for f in files] == ["n1", "n2", "n3"]
    cluster = load_cluster(tmp_path / "c" / "cluster.toml")
    assert [(n.id, n.url) for n in cluster] == [
        ("n1", "wss://127.0.0.1:7400"), ("n2", "wss://127.0.0.1:7401"),
        ("n3", "wss://127.0.0.1:7402"),
    ]
    cfg = load_node_config(files[1])
    assert cfg.id == "n2" and cfg.port == 7401 and cfg.host == "127.0.0.1"
    assert cfg.storage == f"lmdb://{(tmp_path / 'c' / 'n2' / 'data').resolve()}"
    assert 'storage = "lmdb://data"' in files[1].read_text()  # relative in the file
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
    init_cluster(tmp_path / "c", nodes=1, base_port=7600, tls=False)
    node = _write(tmp_path / "c" / "n1" / "node.toml",
                  'id = "n1"\nport = 0\ncluster = "../cluster.toml"\nkey_file = "node.key"\n'
                  'storage = "memory://"\nallow_plain = true\n')
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
        ('id = "n1"\n', "missing required field 'port'"),
        ('id = "n1"\nport = "x"\n', "field 'port': Expected `int`, got `str`"),
        ('id = "n9"\nport = 1\ncluster = "../cluster.toml"\nkey_file = "node.key"\nstorage = "memory://"\n',
         "not in the cluster"),
        ('id = "n1"\nport = 1\ncluster = "../nope.toml"\nkey_file = "node.key"\nstorage = "memory://"\n',
         "file not found"),
        ('id = "n1"\nport = 1\ncluster = "../cluster.toml"\nkey_file = "node.key"\nstorage = "memory://"\n'
         'max_queue = 0\n', "field 'max_queue': Expected `int` >= 1"),
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


def _set(path, **settings) -> None:
    """Rewrite the node file ``path`` with ``settings`` over its keys."""
    data = tomllib.loads(path.read_text())
    data.update(settings)
    path.write_text(tomli_w.dumps(data))


def test_admission_settings(tmp_path) -> None:
    init_cluster(tmp_path / "c", nodes=1, base_port=7600)
    node = tmp_path / "c" / "n1" / "node.toml"
    base = node.read_text()
    cfg = load_node_config(node)
    assert (cfg.handshake_timeout, cfg.max_pending_per_ip, cfg.max_connections) == (10.0, 64, 10000)
    _set(node, handshake_timeout=2.5, max_pending_per_ip=8, max_connections=100)
    cfg = load_node_config(node)
    assert (cfg.handshake_timeout, cfg.max_pending_per_ip, cfg.max_connections) == (2.5, 8, 100)
    assert cfg.max_mailboxes_per_ip == 8
    node.write_text(base)
    _set(node, max_mailboxes_per_ip=2)
    assert load_node_config(node).max_mailboxes_per_ip == 2
    for key, bad in (("handshake_timeout", 0), ("max_pending_per_ip", 0), ("max_connections", -1),
                     ("max_connections", "many"), ("max_mailboxes_per_ip", 0)):
        node.write_text(base)
        _set(node, **{key: bad})
        with pytest.raises(ConfigError, match=f"field '{key}'"):
            load_node_config(node)


def test_unknown_key_names_the_closest_known_one(tmp_path) -> None:
    (node,) = init_cluster(tmp_path, nodes=1, base_port=7600)
    _set(node, max_queu=5)
    with pytest.raises(ConfigError, match=r"unknown key 'max_queu' \(did you mean 'max_queue'\?\)"):
        load_node_config(node)
    node.write_text(node.read_text().replace("max_queu = 5\n", "zzz = 1\n"))
    with pytest.raises(ConfigError, match=r"unknown key 'zzz'$"):
        load_node_config(node)


def test_unknown_cluster_key_is_refused(tmp_path) -> None:
    (node,) = init_cluster(tmp_path, nodes=1, base_port=7600)
    cluster = tmp_path / "cluster.toml"
    cluster.write_text(cluster.read_text().replace("url =", "ulr = 1\nurl ="))
    with pytest.raises(ConfigError, match=r"unknown key 'ulr' in node\[0\] \(did you mean 'url'\?\)"):
        load_node_config(node)


def test_environment_overrides(tmp_path) -> None:
    (node,) = init_cluster(tmp_path, nodes=1, base_port=7600)
    cfg = load_node_config(node, environ={"WA_RELAY_MAX_QUEUE": "7", "WA_RELAY_HOST": "0.0.0.0",
                                          "WA_RELAY_QUEUE_TTL": "1.5", "OTHER": "x",
                                          "WA_RELAY_LOG_FORMAT": "json"})
    assert (cfg.max_queue, cfg.host, cfg.queue_ttl, cfg.log_format) == (7, "0.0.0.0", 1.5, "json")
    with pytest.raises(ConfigError, match=r"'WA_RELAY_MAX_QEUE' \(did you mean 'WA_RELAY_MAX_QUEUE'"):
        load_node_config(node, environ={"WA_RELAY_MAX_QEUE": "7"})
    with pytest.raises(ConfigError, match="WA_RELAY_MAX_QUEUE='many'"):
        load_node_config(node, environ={"WA_RELAY_MAX_QUEUE": "many"})
    with pytest.raises(ConfigError, match="WA_RELAY_LOG_FORMAT"):
        load_node_config(node, environ={"WA_RELAY_LOG_FORMAT": "xml"})


@pytest.mark.parametrize(
    ("url", "needle"),
    [("nosuch://x", "no storage backend for URL scheme 'nosuch'"),
     ("data", "has no scheme"),
     ("lmdb://data?map_size=huge", "bad size"),
     ("lmdb://data?mapsize=1G", "unknown lmdb:// options")],
)
def test_bad_storage_url(tmp_path, url: str, needle: str) -> None:
    (node,) = init_cluster(tmp_path, nodes=1, base_port=7600)
    _set(node, storage=url)
    with pytest.raises(ConfigError, match=needle):
        load_node_config(node)


def test_paths_resolve_against_the_file_and_the_dir_can_move(tmp_path, monkeypatch) -> None:
    init_cluster(tmp_path / "a", nodes=2, base_port=7600)
    for text in [p.read_text() for p in (tmp_path / "a").rglob("*.toml")]:
        assert str(tmp_path) not in text  # nothing absolute
    (tmp_path / "a").rename(tmp_path / "b")
    monkeypatch.chdir(tmp_path)  # another working directory
    cfg = load_node_config(Path("b/n2/node.toml"))
    assert cfg.storage == f"lmdb://{tmp_path / 'b' / 'n2' / 'data'}"
    assert cfg.log_file == tmp_path / "b" / "n2" / "node.log"
    assert cfg.key_file == tmp_path / "b" / "n2" / "node.key"
    _set(tmp_path / "b" / "n2" / "node.toml", storage="lmdb://../store?map_size=64M")
    assert load_node_config(Path("b/n2/node.toml")).storage == (
        f"lmdb://{tmp_path / 'b' / 'n2' / '..' / 'store'}?map_size=64M")


def test_generated_files_hold_every_setting_and_the_docs_describe_it(tmp_path) -> None:
    (node,) = init_cluster(tmp_path, nodes=1, base_port=7600)
    written = tomllib.loads(node.read_text())
    assert list(written) == list(NODE_SETTINGS)
    defaults = {f.name: f.default for f in msgspec.structs.fields(NodeFile) if not f.required}
    for key, default in defaults.items():
        if key not in ("log_file", "admin_port", "tls_cert", "tls_key"):
            assert written[key] == default, key
    docs = (Path(__file__).parents[2] / "docs" / "operations.md").read_text()
    for key in NODE_SETTINGS:
        row = next((line for line in docs.splitlines() if line.startswith(f"| `{key}`")), None)
        assert row is not None, f"{key} is not documented in docs/operations.md"
        if key in defaults:
            shown = row.split("|")[2].strip()
            assert shown.strip("`") == (str(defaults[key]) if defaults[key] != "" else "\"\""), key


def test_admin_ports_follow_the_node_ports(tmp_path) -> None:
    files = init_cluster(tmp_path, nodes=3, base_port=7600)
    assert [load_node_config(f).admin_url for f in files] == [
        "http://127.0.0.1:7603", "http://127.0.0.1:7604", "http://127.0.0.1:7605"]
    files = init_cluster(tmp_path, nodes=3, base_port=7600, admin_base_port=0)
    assert [load_node_config(f).admin_port for f in files] == [0, 0, 0]
    with pytest.raises(ConfigError, match="admin ports"):
        init_cluster(tmp_path, nodes=3, base_port=7600, admin_base_port=65535)


def test_rewriting_a_node_file_keeps_its_other_settings(tmp_path) -> None:
    (node,) = init_cluster(tmp_path, nodes=1, base_port=7600)
    _set(node, max_queue=5)
    init_cluster(tmp_path, nodes=1, base_port=7610, reconfigure=True)
    cfg = load_node_config(node)
    assert (cfg.port, cfg.admin_port, cfg.max_queue) == (7610, 7611, 5)
