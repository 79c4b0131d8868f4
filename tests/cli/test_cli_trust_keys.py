"""Issue 10, finding 6: one-time and fallback keys are signed by the device key and
checked by the claimer; claims are throttled per target device and per claiming
account; the fallback key is rotated after use and when old. Real relay nodes on
loopback; the attacker controls a node's storage or an account."""

from __future__ import annotations

import logging
import os
import time
from contextlib import ExitStack

import pytest
import trio
from cli_cluster import alice_and_bob, drain, make_account, run_cluster

from cli.client import Message, open_client
from cli.errors import RelayError, SendFailed
from cli.session import prekeys
from relay.config.abuse import AbuseLimits

DEADLINE = 60


async def test_substituted_one_time_key_is_detected_by_signature(tmp_path, caplog) -> None:
    with trio.fail_after(DEADLINE), ExitStack() as stack:
        async with run_cluster(1) as cluster:
            alice, bob = await alice_and_bob(tmp_path, cluster, stack)
            storage = cluster.storages[cluster.home_of(bob.user_id)]
            # the node's operator swaps bob's keys for its own: one unsigned, one with
            # a real signature of bob's taken from another key, and the fallback key
            real = [await storage.claim_key(bob.user_id, 0) for _ in range(100)]
            assert all(r is not None and not r[2] and len(r[1]) == 96 for r in real)
            evil = os.urandom(32)
            await storage.add_one_time_keys(bob.user_id, 0, [
                ("evil1", evil), ("evil2", evil + real[0][1][32:])])
            await storage.set_fallback_key(bob.user_id, 0, "evil3", evil)
            with caplog.at_level(logging.WARNING, "cli.prekeys"):
                async with open_client(alice) as client:
                    with pytest.raises(SendFailed, match="no device of"):
                        await client.send_text(bob.user_id, "for bob only")
            assert alice.session_set(bob.user_id, 0) is None  # no session on a forged key
            warnings = caplog.text
            assert "not signed" in warnings and "substituted" in warnings

            # honest path: bob's device uploads fresh signed keys; alice's send works
            async with open_client(bob) as client:
                assert client.otk_count == 100
            async with open_client(alice) as client:
                assert (await client.send_text(bob.user_id, "hello")).status == "stored"
            async with open_client(bob) as client:
                got = await drain(client)
            assert [e.text for e in got if isinstance(e, Message)] == ["hello"]


async def test_draining_one_time_keys_is_throttled(tmp_path) -> None:
    with trio.fail_after(DEADLINE), ExitStack() as stack:
        # mallory's claim_keys bucket: 50, refilled slowly (the only claimer limit)
        abuse = AbuseLimits(claim_keys_burst=50, claim_keys_rate=0.01)
        async with run_cluster(2, otk_claim_burst=30, abuse=abuse) as cluster:
            alice, bob = await alice_and_bob(tmp_path, cluster, stack)
            mallory = make_account(tmp_path, "mallory", cluster, stack,
                                   not_on=[cluster.home_of(bob.user_id)])
            storage = cluster.storages[cluster.home_of(bob.user_id)]
            async with open_client(mallory) as client:
                kinds = [(await client.claim_keys(bob.user_id, [0]))[0].fallback
                         for _ in range(50)]
                # 30 one-time keys, then only the fallback key
                assert kinds == [False] * 30 + [True] * 20
                with pytest.raises(RelayError, match="rate_limited") as refused:  # mallory's budget
                    await client.claim_keys(bob.user_id, [0])
                # the node's message says when to retry; the client does not say it again
                assert str(refused.value).count("retry in") == 1, str(refused.value)
                assert refused.value.quota == "claim_keys" and refused.value.retry_after_ms
            assert await storage.count_one_time_keys(bob.user_id, 0) == 70

            # honest path: alice still starts a session (bob's fallback key) and bob reads
            async with open_client(alice) as client:
                assert (await client.send_text(bob.user_id, "still works")).status == "stored"
            fallback_before = bob.fallback.key
            bob.fallback.created_at -= prekeys.MIN_ROTATE_INTERVAL  # not rotated twice a minute
            async with open_client(bob) as client:
                got = await drain(client)
                assert [e.text for e in got if isinstance(e, Message)] == ["still works"]
                # the fallback key was used: bob's device rotates it (uploaded in the
                # background; wait for it with a deadline)
                deadline = time.monotonic() + 10
                while (bob.fallback.key == fallback_before
                       or bob.identity.unpublished_fallback_key() is not None):
                    assert time.monotonic() < deadline
                    await trio.sleep(0.02)
            assert not bob.fallback.used
            carol = make_account(tmp_path, "carol", cluster, stack)  # a new claimer
            async with open_client(carol) as client:
                (key,) = await client.claim_keys(bob.user_id, [0])
            assert key.fallback and key.key == bob.fallback.key  # the new fallback key


async def test_old_fallback_key_is_rotated(tmp_path) -> None:
    with trio.fail_after(DEADLINE), ExitStack() as stack:
        async with run_cluster(1) as cluster:
            _, bob = await alice_and_bob(tmp_path, cluster, stack)
            first = bob.fallback.key
            assert len(first) == 32
            async with open_client(bob):
                pass
            assert bob.fallback.key == first  # young and unused: kept
            bob.fallback.created_at -= prekeys.FALLBACK_MAX_AGE
            async with open_client(bob):
                pass
            assert bob.fallback.key != first and len(bob.fallback.key) == 32
            storage = cluster.storages[cluster.home_of(bob.user_id)]
            for _ in range(100):
                await storage.claim_key(bob.user_id, 0)
            key_id, stored, fallback = await storage.claim_key(bob.user_id, 0)
            assert fallback and stored[:32] == bob.fallback.key
