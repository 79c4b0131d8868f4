"""Cluster pinning (issue 10, finding 1) against real nodes on 127.0.0.1 over TLS: a
client follows ``moved`` only within its pinned cluster description and saves a new
home only after a verified ``auth``; ``wa-cli init`` pins the key it is given and
refuses another cluster's relay; a newer description signed by the same key replaces
the pin; a linked device inherits its primary's pin."""

from __future__ import annotations

import dataclasses
import json
import logging
import subprocess
from contextlib import ExitStack

import cli_procs
import nacl.signing
import pytest
import trio
from cli_cluster import new_account, publish

from cli.client import open_client
from cli.errors import ConnectionFailed
from cli.features.linking import link_device
from cli.session.connection import pin_cluster
from cli.session.state import open_state
from relay.config import NodeConfig, cluster_description
from relay.config.ring import NodeInfo
from relay.protocol.cluster import cluster_key_text, sign_cluster
from relay.testing import LocalCluster, node_configs, open_local_cluster
from tests.tlsproxy import PathAttacker

DEADLINE = 40


def _with_urls(configs: list[NodeConfig], urls: dict[str, str]) -> tuple[NodeInfo, ...]:
    return tuple(NodeInfo(n.id, urls.get(n.id, n.url), n.public_key) for n in configs[0].cluster)


def _signed(key: nacl.signing.SigningKey, infos, version: int, configs: list[NodeConfig]):
    return sign_cluster(key, cluster_description(infos, version, configs[0].max_frame))


async def _start(nursery, configs: list[NodeConfig], first: str = "n2") -> LocalCluster:
    cluster = LocalCluster(nursery, configs)
    await cluster.start(first)
    for config in configs:
        if config.id != first:
            await cluster.start(config.id)
    return cluster


def _account_homed_at(tmp_path, cluster: LocalCluster, node_id: str, stack: ExitStack):
    for i in range(60):
        state = new_account(tmp_path, f"alice-{i}", cluster.urls[node_id], stack)
        if cluster.home_of(state.user_id) == node_id:
            return state
    raise AssertionError(f"no account homed at {node_id}")


async def test_a_redirect_to_a_node_outside_the_pinned_cluster_is_refused(
        nursery, tmp_path, caplog) -> None:
    """n1 is hostile: its own cluster file sends alice's home (n2) to an endpoint of the
    attacker's, which would relay n2's challenge. Alice's client refuses the redirect
    before connecting there; without other nodes to ask it fails and keeps her saved
    URL; knowing the cluster's nodes (``auth_ok.cluster``), it asks the next pinned node
    and reaches her honest home."""
    caplog.set_level(logging.INFO, logger="cli.session.connection")
    with trio.fail_after(DEADLINE), ExitStack() as stack:
        key = nacl.signing.SigningKey.generate()
        configs = node_configs(2, tls=True, data_dir=tmp_path, cluster_key=key)
        n2 = configs[1]
        evil = PathAttacker(n2.port, terminate=True, cert_dir=tmp_path)
        await nursery.start(evil.serve)
        hostile_ring = _with_urls(configs, {"n2": evil.url})
        configs[0] = dataclasses.replace(configs[0], cluster=hostile_ring)  # doc stays honest
        cluster = await _start(nursery, configs)
        honest = {n.id: n.url for n in configs[1].cluster}
        alice = _account_homed_at(tmp_path, cluster, "n2", stack)
        alice.relay_url = honest["n2"]
        await pin_cluster(alice, honest["n2"], bytes(key.verify_key), connect_timeout=10)
        await publish(alice)  # at her honest home
        alice.relay_url = honest["n1"]  # e.g. the --relay given to init
        known, alice.cluster_urls = alice.cluster_urls, []  # no other node to ask
        alice.save()
        with pytest.raises(ConnectionFailed, match="not a node of the pinned cluster"):
            async with open_client(alice, connect_timeout=10):
                pass
        # (n1 itself dials the endpoint for its peer link, so its connection count
        # says nothing about the client; the refusal comes before any connect)
        assert alice.relay_url == honest["n1"]
        alice.cluster_urls = known  # from her earlier auth_ok at n2
        async with open_client(alice, connect_timeout=10) as client:
            assert client.node_id == "n2" and client.url == honest["n2"]
        assert alice.relay_url == honest["n2"]
        assert any("not a node of the pinned cluster" in r.getMessage() for r in caplog.records)


async def test_a_redirect_is_saved_only_after_a_verified_auth(nursery, tmp_path) -> None:
    """An attacker on the path holds n2's address (listed in the description): honest n1
    sends alice there, the attacker relays n2's real challenge. The challenge is signed
    for the attacker's channel to n2, so the client refuses it and does not save the
    redirect; n2 never sees an ``auth`` it could accept."""
    with trio.fail_after(DEADLINE), ExitStack() as stack:
        key = nacl.signing.SigningKey.generate()
        configs = node_configs(2, tls=True, data_dir=tmp_path, cluster_key=key)
        mitm = PathAttacker(configs[1].port, terminate=True, cert_dir=tmp_path)
        await nursery.start(mitm.serve)
        infos = _with_urls(configs, {"n2": mitm.url})
        doc = _signed(key, infos, 1, configs)
        configs = [dataclasses.replace(c, cluster=infos, cluster_doc=doc) for c in configs]
        cluster = await _start(nursery, configs)
        alice = _account_homed_at(tmp_path, cluster, "n2", stack)
        alice.relay_url = cluster.urls["n1"]
        with pytest.raises(ConnectionFailed, match="for this connection"):
            async with open_client(alice, connect_timeout=10):  # pins n1's description
                pass
        assert mitm.connections >= 1  # it was followed (in the description) ...
        assert alice.relay_url == cluster.urls["n1"]  # ... but not saved


async def test_a_newer_description_replaces_the_pin_only_under_the_same_key(
        nursery, tmp_path) -> None:
    with trio.fail_after(DEADLINE), ExitStack() as stack:
        key = nacl.signing.SigningKey.generate()
        configs = node_configs(1, tls=True, data_dir=tmp_path, cluster_key=key)
        cluster = await _start(nursery, configs, first="n1")
        alice = new_account(tmp_path, "alice", cluster.urls["n1"], stack)
        await pin_cluster(alice, cluster.urls["n1"], bytes(key.verify_key), connect_timeout=10)
        await publish(alice)
        assert alice.cluster.version == 1

        async def restart_with(doc) -> None:
            cluster.stop("n1")
            cluster.configs[0] = dataclasses.replace(cluster.configs[0], cluster_doc=doc)
            await cluster.start("n1")

        infos = configs[0].cluster
        await restart_with(_signed(key, infos, 2, configs))
        async with open_client(alice, connect_timeout=10) as client:
            assert client.node_id == "n1"
        assert alice.cluster.version == 2 and alice.cluster.key == bytes(key.verify_key)

        await restart_with(_signed(nacl.signing.SigningKey.generate(), infos, 3, configs))
        with pytest.raises(ConnectionFailed, match="another cluster key"):
            async with open_client(alice, connect_timeout=10):
                pass
        assert alice.cluster.version == 2


async def wa(home, *args) -> subprocess.CompletedProcess:
    return await cli_procs.wa(home, *args, check=False)


async def test_init_pins_the_cluster_key_it_is_given(tmp_path) -> None:
    """``wa-cli init`` as a process: without a key or --trust-on-first-use it refuses
    (exit 2, nothing published); with the honest cluster's key it refuses another
    cluster's relay (exit 1) and pins the honest one over wss://."""
    with trio.fail_after(DEADLINE):
        async with open_local_cluster(2, tls=True, data_dir=tmp_path / "a") as honest, \
                open_local_cluster(1, tls=True, data_dir=tmp_path / "b") as attacker:
            key = cluster_key_text(honest.pin.key)
            relay = honest.urls["n1"]
            refused = await wa(tmp_path / "x", "init", "--name", "x", "--relay", relay)
            assert refused.returncode == 2 and b"--cluster-key" in refused.stderr
            assert not (tmp_path / "x" / "state.bin").exists()
            wrong = await wa(tmp_path / "y", "init", "--name", "y", "--relay",
                             attacker.urls["n1"], "--cluster-key", key)
            assert wrong.returncode == 1 and b"another cluster key" in wrong.stderr
            made = await wa(tmp_path / "z", "--json", "init", "--name", "z", "--relay", relay,
                            "--cluster-key", key)
            assert made.returncode == 0, made.stderr.decode()
            home = json.loads(made.stdout)["home"]
            assert home in honest.urls.values() and home.startswith("wss://")
            with open_state(tmp_path / "z") as state:
                assert state.cluster.key == honest.pin.key
                assert state.cluster.description == honest.pin.description


async def test_a_linked_device_inherits_the_primary_pin_over_tls(tmp_path) -> None:
    with trio.fail_after(DEADLINE), ExitStack() as stack:
        async with open_local_cluster(2, tls=True, data_dir=tmp_path / "c") as cluster:
            alice = new_account(tmp_path, "alice", cluster.urls["n1"], stack)
            await pin_cluster(alice, cluster.urls["n1"], cluster.pin.key, connect_timeout=10)
            async with open_client(alice, connect_timeout=10) as primary:
                await link_device(primary, tmp_path / "laptop", "laptop")
            with open_state(tmp_path / "laptop") as laptop:
                assert laptop.cluster is not None
                assert laptop.cluster.signed == alice.cluster.signed
                async with open_client(laptop, connect_timeout=10) as client:
                    assert client.url.startswith("wss://")
