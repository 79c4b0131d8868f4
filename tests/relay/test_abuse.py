"""Abuse resistance (issue 11) against real nodes on 127.0.0.1: fan-out, a stranger
filling a victim's queue, rate limits, device count, registration by invite,
unauthenticated connections. Every refusal carries its code, its limit and a
retry-after; nothing acknowledged is lost."""

from __future__ import annotations

import dataclasses
import os
from contextlib import AsyncExitStack

import pytest
import trio
from relay_harness import (
    Cluster,
    UserDevice,
    connect,
    deliveries,
    make_configs,
    publish,
    publish_list,
    session,
)

from relay.config.abuse import AbuseLimits
from relay.net import ConnectFailed
from relay.protocol.frames import (
    Ack,
    AuthOk,
    Copy,
    Error,
    GroupRecipient,
    GroupSend,
    KeyCount,
    LinkOpen,
    Ok,
    PutDevices,
    Recipient,
    Send,
    Sent,
    Sync,
    UploadKeys,
)
from relay.services.registration import issue_invite
from storage.lmdb import LmdbStorage

KiB = 1024
MiB = 1024 * KiB

GENEROUS = AbuseLimits(
    account_create_burst=10_000, put_devices_burst=10_000, send_burst=1e6, send_rate=1e6,
    send_bytes_burst=1e12, send_bytes_rate=1e12, upload_keys_burst=1000,
)


def _check_refusal(answer, codes=("quota_exceeded", "rate_limited")) -> Error:
    assert isinstance(answer, Error), answer
    assert answer.code in codes, answer
    assert answer.quota, answer
    assert answer.retry_after_ms is not None and answer.retry_after_ms > 0, answer
    return answer


async def _one_node(nursery, abuse: AbuseLimits, **overrides) -> Cluster:
    cluster = Cluster(nursery, make_configs(1, abuse=abuse, **overrides))
    await cluster.start("n1")
    return cluster


async def test_fan_out_attack_is_refused_before_the_store_grows_past_the_quota(nursery) -> None:
    quota = 2 * MiB + 64 * KiB  # two frames of 128 envelopes of 8 KiB and their headers
    abuse = dataclasses.replace(GENEROUS, queue_sender_bytes=quota, queue_device_bytes=MiB,
                                queue_account_bytes=4 * MiB)
    cluster = await _one_node(nursery, abuse)
    url, store = cluster.url("n1"), cluster.storages["n1"]
    with trio.fail_after(30):
        attacker, honest = UserDevice(), UserDevice()
        # 64 made-up devices: refused by every node (max_devices 8)
        big = await publish_list(url, attacker.device_list(extra_devices=63))
        assert isinstance(big, Error) and (big.code, big.quota) == ("too_large", "max_devices")
        assert await publish(url, attacker) == Ok(id=2)
        assert await publish(url, honest) == Ok(id=2)
        victims = [UserDevice() for _ in range(16)]  # 16 accounts x 8 devices = 128 queues
        for v in victims:
            assert await publish_list(url, v.device_list(extra_devices=7)) == Ok(id=2)
        members = [GroupRecipient(v.user_id, 1, [0, *range(100, 107)]) for v in victims]
        async with session(url, attacker) as a:
            # one frame of 64 KiB x 128 copies (8 MiB): over the fan-out budget, nothing written
            huge = await a.request(GroupSend(id=10, msg_id=os.urandom(16), body=b"x" * 64 * KiB,
                                             recipients=members))
            assert _check_refusal(huge).quota == "fanout"
            assert await store.charged_bytes("u:" + attacker.user_id) == 0
            answers = []
            for i in range(6):  # 8 KiB x 128 = 1 MiB each: the third one is over 2 MiB
                answers.append(await a.request(GroupSend(
                    id=11 + i, msg_id=os.urandom(16), body=b"y" * 8 * KiB, recipients=members)))
        assert [type(x) for x in answers[:2]] == [Sent, Sent]
        for refused in answers[2:]:
            assert _check_refusal(refused).quota == "sender_bytes"
        charged = await store.charged_bytes("u:" + attacker.user_id)
        assert 2 * MiB < charged <= quota
        assert sum([await store.queue_bytes(v.user_id) for v in victims]) == charged
        # honest users keep sending and uploading keys
        async with session(url, honest) as h:
            sent = await h.request(Send(id=5, msg_id=os.urandom(16), recipients=[
                Recipient(victims[0].user_id, 1, [Copy(d, b"hi") for d in [0, *range(100, 107)]])]))
            assert sent == Sent(id=5, status="stored")
            keys = await h.request(UploadKeys(id=6, one_time_keys=honest.one_time_keys(10)))
            assert isinstance(keys, KeyCount) and keys.otk_count == 10


@pytest.mark.parametrize("backend", ["memory", "lmdb"])
async def test_a_stranger_cannot_fill_a_victims_queue_and_a_contact_gets_through(
        tmp_path, backend) -> None:
    abuse = dataclasses.replace(GENEROUS, queue_device_bytes=256 * KiB,
                                queue_sender_share=0.25, queue_strangers_share=0.5)
    async with AsyncExitStack() as stack:
        store = None
        if backend == "lmdb":  # LMDB counts a queue's shares only once it may need them
            store = await stack.enter_async_context(LmdbStorage.open(tmp_path / "n1"))
        async with trio.open_nursery() as node_nursery:  # ends before the store closes
            cluster = Cluster(node_nursery, make_configs(1, abuse=abuse))
            if store is not None:
                cluster.storages["n1"] = store
            await cluster.start("n1")
            await _stranger_and_contact(cluster)
            cluster.stop("n1")


async def _stranger_and_contact(cluster: Cluster) -> None:
    url, store = cluster.url("n1"), cluster.storages["n1"]
    with trio.fail_after(30):
        victim, contact, stranger, stranger2 = (UserDevice() for _ in range(4))
        for d in (victim, contact, stranger, stranger2):
            assert await publish(url, d) == Ok(id=2)
        stored: list[bytes] = []
        async with session(url, victim) as v:  # the victim wrote to its contact once
            assert isinstance(await v.request(Send(id=3, msg_id=os.urandom(16),
                                                   recipients=[contact.recipient()])), Sent)

        async def flood(sender: UserDevice, n: int, size: int) -> list[Error]:
            refusals = []
            async with session(url, sender) as s:
                for i in range(n):
                    mid = os.urandom(16)
                    answer = await s.request(Send(id=10 + i, msg_id=mid, recipients=[
                        victim.recipient(b"%d" % i + b"s" * size)]))
                    if isinstance(answer, Sent):
                        stored.append(mid)
                    else:
                        refusals.append(_check_refusal(answer))
            return refusals

        refused = await flood(stranger, 20, 8 * KiB)  # 160 KiB wanted, 64 KiB allowed
        assert refused and {r.quota for r in refused} == {"sender_share"}
        assert await store.charged_bytes("u:" + stranger.user_id, victim.user_id, 0) <= 64 * KiB
        refused2 = await flood(stranger2, 20, 8 * KiB)  # strangers together: 128 KiB at most
        assert {r.quota for r in refused2} <= {"sender_share", "strangers_share",
                                               "sender_bytes"}
        assert await store.charged_bytes("x:strangers", victim.user_id, 0) <= 128 * KiB
        # the contact is bound by neither share: 100 KiB more fits the 256 KiB queue
        assert await flood(contact, 10, 10 * KiB) == []
        assert await store.queue_bytes(victim.user_id, 0) <= 256 * KiB
        # no acknowledged message is lost: the victim gets every stored one, once
        async with session(url, victim) as v:
            await v.send(Sync(id=50))
            got = await deliveries(v, len(stored))
            assert sorted(item.envelope.msg_id for item in got) == sorted(stored)
            await v.send(Ack(id=0, seq=got[-1].seq))
            assert await v.request(Send(id=51, msg_id=os.urandom(16),
                                        recipients=[contact.recipient()])) == Sent(
                id=51, status="stored")
        assert await store.charged_bytes("u:" + stranger.user_id) == 0  # acks give room back


async def test_rate_limits_answer_retry_after_and_take_nothing_on_refusal(nursery) -> None:
    abuse = dataclasses.replace(GENEROUS, upload_keys_rate=0.5, upload_keys_burst=3,
                                send_rate=1, send_burst=4)
    cluster = await _one_node(nursery, abuse)
    url = cluster.url("n1")
    with trio.fail_after(20):
        alice, bob = UserDevice(), UserDevice()
        for d in (alice, bob):
            assert await publish(url, d) == Ok(id=2)
        async with session(url, alice) as a:
            answers = [await a.request(UploadKeys(id=3 + i, one_time_keys=alice.one_time_keys(2)))
                       for i in range(4)]
            assert [type(x) for x in answers[:3]] == [KeyCount] * 3
            limited = _check_refusal(answers[3], codes=("rate_limited",))
            assert limited.quota == "upload_keys" and 1000 <= limited.retry_after_ms <= 2001
            sends = [await a.request(Send(id=20 + i, msg_id=os.urandom(16),
                                          recipients=[bob.recipient()])) for i in range(6)]
            assert [type(x) for x in sends] == [Sent] * 4 + [Error] * 2
            assert _check_refusal(sends[4], codes=("rate_limited",)).quota == "send"


async def test_an_invite_node_refuses_accounts_without_a_token_and_accepts_one_with(
        nursery) -> None:
    abuse = dataclasses.replace(GENEROUS, registration="invite")
    cluster = await _one_node(nursery, abuse)
    url, store = cluster.url("n1"), cluster.storages["n1"]
    with trio.fail_after(20):
        newcomer = UserDevice()
        refused = await publish(url, newcomer)
        assert isinstance(refused, Error) and (refused.code, refused.quota) == (
            "unauthorized", "registration")
        token = await issue_invite(store, ttl=60)
        async with connect(url) as c:
            await c.hello()
            wrong = await c.request(PutDevices(id=2, device_list=newcomer.device_list(),
                                               invite="not-a-token"))
            assert isinstance(wrong, Error) and wrong.code == "unauthorized"
            assert await c.request(PutDevices(id=3, device_list=newcomer.device_list(),
                                              invite=token)) == Ok(id=3)
            # the account exists: its later lists need no token
            assert await c.request(PutDevices(id=4, device_list=newcomer.device_list(2))) == Ok(
                id=4)
        other = UserDevice()
        async with connect(url) as c:  # a used token does not open a second account
            await c.hello()
            used = await c.request(PutDevices(id=2, device_list=other.device_list(), invite=token))
            assert isinstance(used, Error) and used.code == "unauthorized"
        async with session(url, newcomer):
            pass  # the invited account authenticates


async def test_unauthenticated_connections_cannot_lock_out_an_honest_device(
        nursery, mock_clock) -> None:
    mock_clock.rate = 1.0
    cluster = await _one_node(nursery, GENEROUS, max_pending_per_ip=4, max_pending=6,
                              max_connections=20)
    url = cluster.url("n1")
    honest = UserDevice()
    with trio.fail_after(20) as guard:
        assert await publish(url, honest) == Ok(id=2)
        idle = []
        async with trio.open_nursery() as holders:
            opened = trio.Event()

            async def hold(address: str) -> None:
                try:
                    async with connect(url, local_address=address) as c:
                        await c.hello()
                        idle.append(c)
                        if len(idle) == 6:
                            opened.set()
                        await trio.sleep_forever()
                except ConnectFailed:
                    pass

            for i in range(6):  # 3 + 3 from two addresses: the pool of 6 is full
                holders.start_soon(hold, f"127.0.0.{2 + i % 2}")
            await opened.wait()
            mock_clock.jump(2)
            guard.deadline += 2
            # the oldest idle connection is evicted for the honest device
            async with connect(url) as c:
                await c.hello()
                assert isinstance(await c.auth(honest), AuthOk)
            holders.cancel_scope.cancel()
        # link_open is rate-limited per address (and gives no renewed life: test_linking)
        async with connect(url, local_address="127.0.0.4") as c:
            await c.hello()
            answers = [await c.request(LinkOpen(id=3 + i, device_info=b"{}"))
                       for i in range(12)]
            assert any(isinstance(a, Error) and a.code == "rate_limited" for a in answers)
