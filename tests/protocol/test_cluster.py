"""The signed cluster description, node-signed challenges and channel binding
(:mod:`relay.protocol.cluster`), sans-I/O: the client-side checks that make a
redirect to an unknown node, a relayed challenge or a forged description fail."""

from __future__ import annotations

import dataclasses
import os

import nacl.signing
import pytest

from relay.protocol import DEFAULT_LIMITS, ErrorCode, RemoteProtocolError, read_frame, write_frame
from relay.protocol.cluster import (
    ClusterDescription,
    ClusterNode,
    PinnedCluster,
    SignedCluster,
    challenge_message,
    check_challenge,
    cluster_key_text,
    is_loopback,
    parse_cluster_key,
    server_end_point,
    sign_cluster,
    verify_cluster,
)
from relay.protocol.connection import ServerConnection
from relay.protocol.handshake import Handshake

NODE_KEYS = {nid: nacl.signing.SigningKey.generate() for nid in ("n1", "n2")}
BINDING = server_end_point(b"certificate of n1")
OTHER_BINDING = server_end_point(b"certificate of a man in the middle")


def _description(version: int = 1, **extra_nodes: nacl.signing.SigningKey) -> ClusterDescription:
    keys = {**NODE_KEYS, **extra_nodes}
    return ClusterDescription(version, tuple(
        ClusterNode(nid, f"wss://127.0.0.1:{7400 + i}", bytes(k.verify_key))
        for i, (nid, k) in enumerate(sorted(keys.items()))), DEFAULT_LIMITS.max_frame)


def test_a_description_verifies_only_under_its_cluster_key() -> None:
    cluster_key, other = nacl.signing.SigningKey.generate(), nacl.signing.SigningKey.generate()
    signed = sign_cluster(cluster_key, _description())
    assert verify_cluster(signed, bytes(cluster_key.verify_key)) == _description()
    assert verify_cluster(signed).node_at("wss://127.0.0.1:7401/").id == "n2"
    forged = sign_cluster(other, _description(n3=nacl.signing.SigningKey.generate()))
    with pytest.raises(RemoteProtocolError, match="another cluster key") as info:
        verify_cluster(forged, bytes(cluster_key.verify_key))
    assert info.value.code is ErrorCode.UNAUTHORIZED
    # the attacker's body under the real key's name: the signature does not verify
    spliced = SignedCluster(forged.body, signed.signature, signed.cluster_key)
    with pytest.raises(RemoteProtocolError, match="does not verify"):
        verify_cluster(spliced, bytes(cluster_key.verify_key))


def test_only_a_newer_description_by_the_same_key_replaces_the_pin() -> None:
    cluster_key = nacl.signing.SigningKey.generate()
    pin = PinnedCluster.verify(sign_cluster(cluster_key, _description(1)))
    newer = pin.newer(sign_cluster(cluster_key, _description(2, n3=NODE_KEYS["n1"])))
    assert newer.version == 2 and newer.description.node("n3") is not None
    with pytest.raises(RemoteProtocolError) as info:
        newer.newer(sign_cluster(cluster_key, _description(2)))
    assert info.value.code is ErrorCode.STALE_VERSION
    with pytest.raises(RemoteProtocolError, match="another cluster key"):
        pin.newer(sign_cluster(nacl.signing.SigningKey.generate(), _description(9)))


def test_cluster_key_text_round_trips() -> None:
    key = bytes(nacl.signing.SigningKey.generate().verify_key)
    text = cluster_key_text(key)
    assert text.startswith("wa-cluster-") and parse_cluster_key(text.upper()) == key
    assert parse_cluster_key(text.removeprefix("wa-cluster-")) == key
    for bad in ("wa-cluster-", "wa-cluster-abc", "not base32 !"):
        with pytest.raises(ValueError):
            parse_cluster_key(bad)


def _signed_challenge(node_id: str, binding: bytes, key: nacl.signing.SigningKey | None = None):
    nonce = os.urandom(32)
    key = key or NODE_KEYS[node_id]
    return nonce, key.sign(challenge_message(nonce, node_id, "rv", binding)).signature


def test_challenge_checks_refuse_unknown_nodes_other_nodes_and_relayed_challenges() -> None:
    desc = _description()
    nonce, sig = _signed_challenge("n1", BINDING)
    ok = check_challenge(desc, nonce=nonce, node_id="n1", ring_version="rv", signature=sig,
                         binding=BINDING, expect_node_id="n1")
    assert ok.id == "n1"
    cases = [
        # a node outside the pinned description (a redirect target of the attacker's)
        (dict(node_id="evil"), "not in the pinned cluster"),
        # a cluster node, but not the one the client meant to reach
        (dict(expect_node_id="n2"), "expected 'n2'"),
        # the honest node's challenge relayed over another TLS connection
        (dict(binding=OTHER_BINDING), "not signed by its key for this connection"),
        # signed by a key that is not the node's
        (dict(signature=_signed_challenge("n1", BINDING, NODE_KEYS["n2"])[1]), "not signed"),
        (dict(signature=None), "not signed"),
    ]
    for change, needle in cases:
        fields = dict(nonce=nonce, node_id="n1", ring_version="rv", signature=sig,
                      binding=BINDING, expect_node_id="n1") | change
        with pytest.raises(RemoteProtocolError, match=needle) as info:
            check_challenge(desc, **fields)
        assert info.value.code is ErrorCode.UNAUTHORIZED


def test_handshake_verifies_the_node_and_binds_auth_to_the_channel() -> None:
    """A client :class:`Handshake` against the node's :class:`ServerConnection`: the
    challenge is signed for the channel; ``auth`` covers the binding, so a node seeing
    another binding (a relay in the middle) cannot verify it."""
    server = ServerConnection()
    hs = Handshake("client", "t", binding=BINDING, cluster=_description())
    server.receive_data(write_frame(dataclasses.replace(hs.hello(), id=1)))
    challenge = server.challenge(os.urandom(32), "n1", "rv",
                                 sign=lambda m: NODE_KEYS["n1"].sign(m).signature,
                                 binding=BINDING, cluster_version=1)
    got = hs.receive_challenge(read_frame(write_frame(challenge)))
    assert hs.node is not None and hs.node.id == "n1" and got.cluster_version == 1

    relayed = Handshake("client", "t", binding=OTHER_BINDING, cluster=_description())
    relayed.hello()
    with pytest.raises(RemoteProtocolError, match="for this connection"):
        relayed.receive_challenge(read_frame(write_frame(challenge)))


def test_plain_ws_is_for_loopback_only() -> None:
    assert all(map(is_loopback, ["127.0.0.1", "127.9.9.9", "::1", "[::1]", "localhost"]))
    assert not any(map(is_loopback, ["10.0.0.1", "example.org", "0.0.0.0", "::"]))
