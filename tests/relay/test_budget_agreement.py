"""Issue 15, "Nodes in a cluster agree on the limits (part of the cluster description)":
the size budget is signed into the cluster description; a node whose ``node.toml``
says otherwise does not start, and a running node refuses a peer link to a node
that announces another budget (so no node accepts what another would refuse)."""

from __future__ import annotations

import dataclasses
import logging
import tomllib

import pytest
import tomli_w
import trio
from relay_harness import Cluster, make_configs

from relay.config import ConfigError, init_cluster, load_key, load_node_config
from relay.config.cluster_files import CLUSTER_KEY_FILE, sign_cluster_file


def _set(path, **settings) -> None:
    data = tomllib.loads(path.read_text())
    data.update(settings)
    path.write_text(tomli_w.dumps(data))


def test_a_node_file_whose_budget_differs_from_the_signed_description_is_refused(
        tmp_path) -> None:
    files = init_cluster(tmp_path / "c", nodes=2, base_port=7700, tls=False)
    assert load_node_config(files[0]).max_frame == 1 << 20
    _set(files[0], max_frame=2 << 20)
    with pytest.raises(ConfigError, match="differ from the signed cluster description"):
        load_node_config(files[0])
    # the operator signs the new budget into the description: both files agree again
    sign_cluster_file(tmp_path / "c" / "cluster.toml",
                      load_key(tmp_path / "c" / CLUSTER_KEY_FILE), max_frame=2 << 20)
    assert load_node_config(files[0]).max_frame == 2 << 20
    with pytest.raises(ConfigError, match="differ from the signed cluster description"):
        load_node_config(files[1])  # still 1 MiB in its node.toml


async def test_a_peer_announcing_another_budget_gets_no_link(nursery, caplog) -> None:
    caplog.set_level(logging.INFO, logger="wa_relay.node.n1")
    configs = make_configs(2)
    configs[1] = dataclasses.replace(configs[1], max_envelope=100_000)  # n2 differs
    cluster = Cluster(nursery, configs)
    await cluster.start_all()

    def lines(needle: str) -> list[str]:
        return [r.getMessage() for r in caplog.records if needle in r.getMessage()]

    with trio.fail_after(15):
        while not lines("peer link to n2:"):  # noqa: ASYNC110 - poll, deadline above
            await trio.sleep(0.02)
    assert "size budget differs" in lines("peer link to n2:")[0]
    assert lines("peer link to n2 up") == []
