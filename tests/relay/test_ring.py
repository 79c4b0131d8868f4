"""Rendezvous hashing: deterministic, balanced, minimal movement."""

from __future__ import annotations

import os
from collections import Counter

import pytest

from relay.config.ring import NodeInfo, Ring, ring_version, score
from relay.protocol import user_id_from_key


def _nodes(n: int) -> list[NodeInfo]:
    return [NodeInfo(f"n{i}", f"ws://127.0.0.1:{7400 + i}", bytes([i]) * 32) for i in range(1, n + 1)]


def _users(n: int) -> list[str]:
    return [user_id_from_key(os.urandom(32)) for _ in range(n)]


def test_deterministic_and_order_independent() -> None:
    users = _users(200)
    a, b = Ring(_nodes(3)), Ring(list(reversed(_nodes(3))))
    assert [a.home(u).id for u in users] == [b.home(u).id for u in users]
    assert a.version == b.version == ring_version(_nodes(3))
    assert score("n1", users[0]) == score("n1", users[0]) < 2**64


def test_known_value() -> None:
    # blake2b-64("n1\0user") pins the hash function and byte order.
    import hashlib

    expected = int.from_bytes(hashlib.blake2b(b"n1\x00user", digest_size=8).digest(), "big")
    assert score("n1", "user") == expected


def test_balanced_over_three_nodes() -> None:
    ring = Ring(_nodes(3))
    counts = Counter(ring.home(u).id for u in _users(3000))
    assert set(counts) == {"n1", "n2", "n3"}
    for c in counts.values():
        assert 850 <= c <= 1150, counts  # 1000 +- 15 %


def test_minimal_movement_when_a_node_is_added() -> None:
    users = _users(3000)
    old, new = Ring(_nodes(3)), Ring(_nodes(4))
    moved = [u for u in users if old.home(u).id != new.home(u).id]
    assert all(new.home(u).id == "n4" for u in moved)
    assert 600 <= len(moved) <= 900  # about 1/4 of 3000


def test_version_changes_with_url_or_key() -> None:
    nodes = _nodes(3)
    changed = [*nodes[:2], NodeInfo("n3", "ws://127.0.0.1:9999", nodes[2].public_key)]
    assert ring_version(nodes) != ring_version(changed)
    assert len(ring_version(nodes)) == 64


def test_lookup_and_errors() -> None:
    ring = Ring(_nodes(2))
    assert ring.node("n2").url.endswith("7402") and ring.node("zz") is None
    assert "n1" in ring and len(ring) == 2
    with pytest.raises(ValueError):
        Ring([])
    with pytest.raises(ValueError):
        Ring([_nodes(1)[0], _nodes(1)[0]])


def test_home_cache_is_bounded_and_agrees_with_scores() -> None:
    users = _users(300)
    ring = Ring(_nodes(5), home_cache=16)
    for _ in range(2):  # the second pass mixes hits and evictions
        for u in users:
            best = max(ring.nodes, key=lambda n: (score(n.id, u), n.id))
            assert ring.home(u) is best
    assert ring._cached_home.cache_info().currsize == 16
    hot = users[-1]
    hits = ring._cached_home.cache_info().hits
    assert ring.home(hot) is ring.home(hot)
    assert ring._cached_home.cache_info().hits == hits + 2
