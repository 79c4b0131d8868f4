"""Attacks by someone on the network path (issue 10, finding 2), against real nodes on
127.0.0.1 over TLS: a frame injected into an authenticated peer link, a man in the
middle relaying a node's challenge to a device or to a peer node, and plain ``ws://``
to an address that is not loopback. And the honest path over ``wss://``.

The attacker is :class:`tests.tlsproxy.PathAttacker`, standing where the cluster
file says a node is (so peer links and devices reach it instead of the node)."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import nacl.signing
import pytest
import trio
from relay_harness import (
    Cluster,
    connect,
    deliveries,
    device_homed_at,
    publish,
    session,
)

import relay.net as net
from relay.config import NodeConfig, cluster_description
from relay.config.ring import NodeInfo
from relay.net.client import open_client_connection
from relay.protocol import Limits, write_frame
from relay.protocol.cluster import sign_cluster
from relay.protocol.frames import Copy, Error, Forward, Recipient, Send, Sent, Sync
from relay.protocol.stored import decode_envelope
from relay.testing import node_configs
from tests.tlsproxy import PathAttacker, ws_client_frame

DEADLINE = 30


def _reroute(configs: list[NodeConfig], node_id: str, url: str,
             cluster_key: nacl.signing.SigningKey) -> list[NodeConfig]:
    """The configs with ``node_id``'s URL replaced by ``url`` in every node's cluster
    file and in the signed description (the attacker sits at that address)."""
    infos = tuple(NodeInfo(n.id, url if n.id == node_id else n.url, n.public_key)
                  for n in configs[0].cluster)
    doc = sign_cluster(cluster_key, cluster_description(infos, 1, configs[0].max_frame))
    return [dataclasses.replace(c, cluster=infos, cluster_doc=doc) for c in configs]


async def _tls_cluster(nursery: trio.Nursery, tmp_path: Path, *, attacker_before: str,
                       terminate: bool, tls: bool = True) -> tuple[Cluster, PathAttacker]:
    """Two TLS nodes n1, n2 (plain loopback ones with ``tls=False``) whose cluster files
    put an attacker's proxy in front of ``attacker_before``."""
    key = nacl.signing.SigningKey.generate()
    configs = node_configs(2, tls=tls, data_dir=tmp_path, cluster_key=key)
    target = next(c for c in configs if c.id == attacker_before)
    proxy = PathAttacker(target.port, terminate=terminate, cert_dir=tmp_path,
                         scheme="wss" if tls else "ws")
    await nursery.start(proxy.serve)
    cluster = Cluster(nursery, _reroute(configs, attacker_before, proxy.url, key))
    # the node behind the proxy first: a connection the proxy cannot pass on yet is
    # closed before the WebSocket upgrade, which a plain ws:// client only notices
    # after its connect timeout
    await cluster.start(attacker_before)
    for config in configs:
        if config.id != attacker_before:
            await cluster.start(config.id)
    return cluster, proxy


async def _send(url: str, sender, recipient, body: bytes) -> bytes:
    mid = os.urandom(16)
    async with session(url, sender) as a:
        assert await a.request(Send(id=3, msg_id=mid, recipients=[recipient.recipient(body)])) \
            == Sent(id=3, status="stored")
    return mid


async def _queued(cluster: Cluster, device) -> list[bytes]:
    queue = await cluster.storages[cluster.home_of(device.user_id)].read_queue(device.user_id, 0)
    return [decode_envelope(item.envelope).body for item in queue]


async def test_the_honest_path_runs_over_wss(nursery, tmp_path) -> None:
    """Devices and the peer link between two TLS nodes: authenticated over ``wss://``,
    every signature bound to the certificate's channel binding."""
    with trio.fail_after(DEADLINE):
        cluster = Cluster(nursery, node_configs(2, tls=True, data_dir=tmp_path))
        await cluster.start_all()
        assert all(url.startswith("wss://") for url in cluster.urls.values())
        alice, bob = device_homed_at(cluster.ring, "n1"), device_homed_at(cluster.ring, "n2")
        await publish(cluster.url("n1"), alice)
        await publish(cluster.url("n2"), bob)
        async with connect(cluster.url("n1")) as c:
            assert len(c.link.socket.binding) == 32  # SHA-256 of n1's certificate
            challenge = await c.hello()
            c.handshake.verify_node(cluster.pin.description)  # signed for this channel
            assert challenge.cluster_version == 1
        await _send(cluster.url("n1"), alice, bob, b"over wss")  # n1 -> n2: a wss peer link
        async with session(cluster.url("n2"), bob) as b:
            await b.send(Sync(id=5))
            (item,) = await deliveries(b, 1)
            assert item.envelope.body == b"over wss" and item.envelope.sender_user == alice.user_id


@pytest.mark.parametrize("tls", [True, False], ids=["wss", "plain-loopback-ws"])
async def test_a_frame_injected_into_a_peer_link_is_refused(nursery, tmp_path, tls) -> None:
    """An attacker on the path between n1 and n2 writes a ``forward`` of its own into the
    authenticated peer link. With TLS the bytes are no TLS record: n2 drops the
    connection, nothing is stored, and the link comes back for honest traffic.
    Without TLS (what ``allow_plain`` permits, on loopback only) the same bytes would
    be stored: the reason ``ws://`` is refused anywhere else."""
    with trio.fail_after(DEADLINE):
        cluster, proxy = await _tls_cluster(nursery, tmp_path, attacker_before="n2",
                                            terminate=False, tls=tls)
        alice, bob = device_homed_at(cluster.ring, "n1"), device_homed_at(cluster.ring, "n2")
        await publish(cluster.url("n1"), alice)
        await publish(cluster.urls["n2"], bob)  # through the proxy, as any client would
        await _send(cluster.url("n1"), alice, bob, b"before")  # the peer link n1 -> n2 is up
        assert await _queued(cluster, bob) == [b"before"]
        forged = Forward(id=10_000, msg_id=os.urandom(16), sender_user=alice.user_id,
                         sender_device=0, ts=1,
                         recipients=[Recipient(bob.user_id, 1, [Copy(0, b"injected")])])
        assert await proxy.inject(ws_client_frame(write_frame(forged))) >= 1
        if tls:
            await proxy.ended.wait()  # n2's TLS layer refuses the bytes and drops the link
        await _send(cluster.url("n1"), alice, bob, b"after")  # (reconnected,) honest
        expected = [b"before", b"after"] if tls else [b"before", b"injected", b"after"]
        assert await _queued(cluster, bob) == expected


async def test_a_peer_link_through_a_tls_man_in_the_middle_is_refused(nursery, tmp_path) -> None:
    """A man in the middle with its own certificate relays n2's challenge to n1 (so it
    could then inject frames into the plaintext it sees): n1 finds the challenge signed
    for another channel and refuses the link, so n1's messages for n2 wait in its
    outbox instead of crossing the attacker."""
    with trio.fail_after(DEADLINE):
        cluster, proxy = await _tls_cluster(nursery, tmp_path, attacker_before="n2",
                                            terminate=True)
        alice, bob = device_homed_at(cluster.ring, "n1"), device_homed_at(cluster.ring, "n2")
        await publish(cluster.url("n1"), alice)
        n1, n2 = cluster.config("n1"), cluster.ring.node("n2")
        assert n2 is not None
        with pytest.raises(net.HandshakeFailed, match="not signed by its node key for this"):
            async with net.open_peer_connection(
                    cluster.urls["n2"], node_id="n1", peer_id="n2",
                    sign=lambda m: n1.signing_key.sign(m).signature, peer_key=n2.public_key,
                    ring_version=cluster.ring.version,
                    budget=Limits.for_node(n1.max_frame, n1.max_envelope)):
                pass
        async with session(cluster.url("n1"), alice) as a:  # the node's own link: refused too
            answer = await a.request(Send(id=3, msg_id=os.urandom(16),
                                          recipients=[bob.recipient(b"x")]))
            assert answer == Sent(id=3, status="queued")  # kept in the outbox, not delivered
        assert proxy.connections >= 2
        assert await cluster.storages["n2"].read_queue(bob.user_id, 0) == []


async def test_a_relayed_challenge_fails_both_ways(nursery, tmp_path) -> None:
    """A device means to reach n2 but the network delivers it to a man in the middle
    that relays n2's real challenge: the device refuses it (signed for the relay's
    channel to n2), and the device's ``auth``, signed for the device's channel, does not
    verify at n2 either. The honest path to n2 still works."""
    with trio.fail_after(DEADLINE):
        cluster, proxy = await _tls_cluster(nursery, tmp_path, attacker_before="n2",
                                            terminate=True)
        bob = device_homed_at(cluster.ring, "n2")
        direct = f"wss://127.0.0.1:{cluster.config('n2').port}"
        await publish(direct, bob)
        with pytest.raises(net.HandshakeFailed, match="for this connection"):
            async with open_client_connection(proxy.url, agent="t", cluster=cluster.pin,
                                              expect_node_id="n2"):
                pass
        async with connect(proxy.url) as c:  # a device that does not check the challenge
            await c.hello()
            answer = await c.auth(bob)
            assert isinstance(answer, Error) and answer.code == "unauthorized", answer
        async with session(direct, bob) as honest:
            assert honest.challenge is not None and honest.challenge.node_id == "n2"


async def test_plain_ws_to_an_address_that_is_not_loopback_is_refused() -> None:
    """No TLS, no channel binding: ``ws://`` is refused before any byte is sent unless
    the host is a loopback address."""
    with trio.fail_after(5):
        for url in ("ws://10.0.0.1:7400", "ws://example.org:80/"):
            with pytest.raises(net.ConnectFailed, match="allowed only to a loopback"):
                async with net.open_link(url):
                    pass
