"""``wa-relay --version``, ``keygen``, ``check-config``, and configuration errors of real
processes (exit codes, the database a relative storage URL opens)."""

from __future__ import annotations

import stat
import subprocess
import time
from importlib.metadata import version

import nacl.signing
import tomli_w
from click.testing import CliRunner

from relay.__main__ import main
from relay.config import init_cluster, load_cluster, load_node_config
from relay.testing import LoggedProcess, free_base_port, tool


def test_version() -> None:
    result = CliRunner().invoke(main, ["--version"])
    assert result.exit_code == 0
    assert result.output.strip() == f"wa-relay, version {version('wa-relay')}"


def test_keygen_writes_a_private_key_and_prints_its_entry(tmp_path) -> None:
    key_file = tmp_path / "n4.key"
    result = CliRunner().invoke(main, ["keygen", "--key-file", str(key_file), "--id", "n4",
                                       "--url", "ws://10.0.0.4:7400"])
    assert result.exit_code == 0, result.output
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert result.output.startswith("[[node]]\n")
    (tmp_path / "cluster.toml").write_text(result.output)
    (entry,) = load_cluster(tmp_path / "cluster.toml")
    assert (entry.id, entry.url) == ("n4", "ws://10.0.0.4:7400")
    assert entry.public_key == bytes(nacl.signing.SigningKey(key_file.read_bytes()).verify_key)
    again = CliRunner().invoke(main, ["keygen", "--key-file", str(key_file), "--id", "n4",
                                      "--url", "ws://10.0.0.4:7400"])
    assert again.exit_code == 2 and "never overwritten" in again.output
    bad = CliRunner().invoke(main, ["keygen", "--key-file", str(tmp_path / "x"), "--id", "x",
                                    "--url", "http://x"])
    assert bad.exit_code == 2 and not (tmp_path / "x").exists()


def test_check_config(tmp_path) -> None:
    (node,) = init_cluster(tmp_path, nodes=1, base_port=7400)
    result = CliRunner().invoke(main, ["check-config", "--config", str(node)],
                                env={"WA_RELAY_MAX_QUEUE": "5"})
    assert result.exit_code == 0, result.output
    assert result.output.startswith(f"# {node}: ok (node n1, 1 nodes in the cluster")
    assert "max_queue = 5\n" in result.output
    assert f'storage = "lmdb://{tmp_path / "n1" / "data"}"' in result.output
    node.write_text(node.read_text().replace("max_queue", "max_qeue"))
    result = CliRunner().invoke(main, ["check-config", "--config", str(node)])
    assert result.exit_code == 2
    assert "unknown key 'max_qeue' (did you mean 'max_queue'?)" in result.output


def _serve(config, tmp_path, cwd, name: str) -> LoggedProcess:
    return LoggedProcess([*tool("wa-relay"), "serve", "--config", str(config)],
                         stdout_log=tmp_path / f"{name}.out", stderr_log=tmp_path / f"{name}.err",
                         cwd=cwd, name=name)


def _set(path, **settings) -> None:
    text = path.read_text()
    for key, value in settings.items():
        lines = [line for line in text.splitlines() if not line.startswith(f"{key} =")]
        text = "\n".join(lines) + "\n" + tomli_w.dumps({key: value})
    path.write_text(text)


def test_config_errors_of_a_real_process_exit_2(tmp_path) -> None:
    (node,) = init_cluster(tmp_path / "c", nodes=1, base_port=free_base_port(2))
    base = node.read_text()
    for settings, needle in [
        ({"max_queu": 1}, "unknown key 'max_queu' (did you mean 'max_queue'?)"),
        ({"storage": "nosuch://x"}, "no storage backend for URL scheme 'nosuch'"),
        ({"max_frame": 10}, "field 'max_frame': Expected `int` >= 1024"),
    ]:
        node.write_text(base)
        _set(node, **settings)
        proc = _serve(node, tmp_path, tmp_path, "bad")
        code = proc.reap(30)
        assert code == 2, proc.stderr_tail()
        assert needle in proc.stderr_tail(), proc.stderr_tail()


def test_a_relative_storage_url_opens_the_database_beside_node_toml(tmp_path) -> None:
    """Started from another working directory, the node opens n1/data (not ./data)."""
    (node,) = init_cluster(tmp_path / "c", nodes=1, base_port=free_base_port(2))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    proc = _serve(node.relative_to(tmp_path), tmp_path, tmp_path, "n1")  # cwd: tmp_path
    try:
        assert proc.next_ready(time.monotonic() + 30) is not None, proc.stderr_tail()
    finally:
        assert proc.stop(30) == (0, False), proc.stderr_tail()
    data = tmp_path / "c" / "n1" / "data"
    assert (data / "data.mdb").exists()
    assert not (tmp_path / "data").exists() and not (tmp_path / "lmdb:").exists()
    assert stat.S_IMODE((data / "data.mdb").stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "c" / "n1" / "node.log").stat().st_mode) == 0o600
    # the same from a third directory, through a moved data dir
    (tmp_path / "c").rename(tmp_path / "moved")
    moved = tmp_path / "moved" / "n1" / "node.toml"
    assert load_node_config(moved).storage == f"lmdb://{tmp_path / 'moved' / 'n1' / 'data'}"
    run = subprocess.run([*tool("wa-relay"), "check-config", "--config", str(moved)],
                         cwd=elsewhere, capture_output=True, timeout=60, check=False)
    assert run.returncode == 0, run.stderr
