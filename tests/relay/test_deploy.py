"""deploy/: the systemd unit passes ``systemd-analyze verify`` (where available), the
example node.toml and the container's environment pass the config schema, and the
container file copies only what exists."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from relay.config import env_overrides, parse_node_file

DEPLOY = Path(__file__).parents[2] / "deploy"


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze")
def test_systemd_unit_verifies(tmp_path) -> None:
    unit = (DEPLOY / "wa-relay.service").read_text()
    assert "ExecStart=/opt/wa-relay/bin/wa-relay serve --config /etc/wa-relay/node.toml" in unit
    assert "RestartPreventExitStatus=2" in unit and "UMask=0077" in unit
    # verify checks that the program exists and the user resolves: point it at ours
    here = Path(sys.executable).parent / "wa-relay"
    local = (unit.replace("/opt/wa-relay/bin/wa-relay", str(here))
             .replace("User=wa-relay", "User=root").replace("Group=wa-relay", "Group=root"))
    (tmp_path / "wa-relay.service").write_text(local)
    run = subprocess.run(["systemd-analyze", "verify", str(tmp_path / "wa-relay.service")],
                         capture_output=True, text=True, timeout=60, check=False)
    assert run.returncode == 0, run.stderr
    assert "wa-relay.service" not in run.stderr, run.stderr  # no warning about our unit


def test_example_node_toml_and_container_environment_are_valid() -> None:
    node = parse_node_file(DEPLOY / "node.toml", environ={})
    assert (node.admin_host, node.admin_port, node.log_file) == (
        "127.0.0.1", 9400, "/var/log/wa-relay/node.log")
    containerfile = (DEPLOY / "Containerfile").read_text()
    env = dict(re.findall(r"(WA_RELAY_\w+)=(\S*)", containerfile))
    overrides = env_overrides(env)
    assert overrides["admin_port"] == 9400 and overrides["log_file"] == ""
    assert overrides["storage"] == "lmdb:///var/lib/wa-relay/data"
    with_env = parse_node_file(DEPLOY / "node.toml", environ=env)
    assert with_env.host == "0.0.0.0" and with_env.log_format == "json"


def test_container_file_copies_what_exists() -> None:
    root = DEPLOY.parent
    text = (DEPLOY / "Containerfile").read_text()
    for line in text.splitlines():
        if line.startswith("COPY ") and "--from" not in line:
            for src in line.split()[1:-1]:
                assert (root / src).exists(), src
