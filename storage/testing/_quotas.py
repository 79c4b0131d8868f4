"""Conformance: exact queue byte accounting, byte quotas, correspondents, invites."""

from __future__ import annotations

from ..base import EnqueueRequest, QueueQuota
from ..errors import QueueFull
from ._base import ALICE, BOB, ConformanceBase, needs, uid

T0 = 1_800_000_000.0
CAROL = uid("carol")


async def _counts(st, tag: str = "u:carol") -> tuple[int, int, int, int, int]:
    """(alice dev 0, alice dev 1, alice all, tag total, tag in alice dev 0)."""
    return (await st.queue_bytes(ALICE, 0), await st.queue_bytes(ALICE, 1),
            await st.queue_bytes(ALICE), await st.charged_bytes(tag),
            await st.charged_bytes(tag, ALICE, 0))


class QuotaConformance(ConformanceBase):
    """Byte counts stay exact across enqueue, ack, purge and expiry; quotas refuse
    whole requests and name the bound."""

    async def test_bytes_exact_across_enqueue_ack_expire_purge(self) -> None:
        async with self.opened() as st:
            [r1, r2, r3] = await st.enqueue_many([
                EnqueueRequest([(ALICE, 0, b"a" * 10), (ALICE, 1, b"b" * 20)], now=T0,
                               charges=("u:carol", "n:n2")),
                EnqueueRequest([(ALICE, 0, b"c" * 5)], now=T0 + 100, charges=("u:carol",)),
                EnqueueRequest([(ALICE, 0, b"d" * 7), (BOB, 0, b"e" * 3)], now=T0 + 200),
            ])
            assert r1 == [1, 1] and r2 == [2] and r3 == [3, 1]
            assert await _counts(st) == (22, 20, 42, 35, 15)
            assert await st.charged_bytes("n:n2") == 30
            assert await st.charged_bytes("n:n2", ALICE, 1) == 20
            assert await st.queue_bytes(BOB) == 3
            assert await st.ack(ALICE, 0, 1) == 1
            assert await _counts(st) == (12, 20, 32, 25, 5)
            assert await st.charged_bytes("n:n2") == 20
            assert await st.expire(T0 + 150) == 2  # alice/1 seq 1 and alice/0 seq 2
            assert await _counts(st) == (7, 0, 7, 0, 0)
            assert await st.charged_bytes("n:n2") == 0
            assert await st.purge_device(ALICE, 0) == 1
            assert await _counts(st) == (0, 0, 0, 0, 0)
            assert await st.queue_bytes(BOB, 0) == 3
            assert await st.ack_many([(BOB, 0, 5)]) == [1]
            assert await st.queue_bytes(BOB) == 0

    async def test_duplicates_add_nothing(self) -> None:
        async with self.opened() as st:
            req = EnqueueRequest([(ALICE, 0, b"x" * 9)], dedupe=b"m1", now=T0, charges=("t",))
            assert await st.enqueue_many([req, req]) == [[1], None]
            assert await st.queue_bytes(ALICE, 0) == 9
            assert await st.charged_bytes("t") == 9

    async def test_each_quota_refuses_whole_request_and_names_itself(self) -> None:
        async with self.opened() as st:
            cases = [
                (QueueQuota(device_bytes=50), 0, 11, "device_bytes"),
                (QueueQuota(account_bytes=100), 2, 21, "account_bytes"),
                (QueueQuota(charge_bytes=90), None, 11, "charge_bytes"),
                (QueueQuota(share_bytes=45), 0, 6, "share_bytes"),
            ]
            for i, (quota, device, over, name) in enumerate(cases):
                user, tag = uid(f"q{i}"), f"s{i}"
                await st.enqueue_many([EnqueueRequest(
                    [(user, 0, b"x" * 40), (user, 1, b"y" * 40)], now=T0, charges=(tag,))])
                target = (uid(f"other{i}"), 0) if device is None else (user, device)
                [answer] = await st.enqueue_many([EnqueueRequest(
                    [(*target, b"z" * over)], now=T0, charges=(tag,), quota=quota)])
                assert isinstance(answer, QueueFull), name
                assert answer.quota == name
                assert answer.tag == (tag if name in ("charge_bytes", "share_bytes") else None)
                assert await st.queue_length(*target) == (0 if device in (None, 2) else 1)
                assert await st.queue_bytes(user) == 80
                assert await st.charged_bytes(tag) == 80
                [ok] = await st.enqueue_many([EnqueueRequest(  # exactly at the bound fits
                    [(*target, b"z" * (over - 1))], now=T0, charges=(tag,), quota=quota)])
                assert isinstance(ok, list), name
                assert await st.charged_bytes(tag) == 80 + over - 1

    async def test_quota_sees_earlier_requests_of_the_batch(self) -> None:
        async with self.opened() as st:
            quota = QueueQuota(share_bytes=25)
            reqs = [EnqueueRequest([(ALICE, 0, b"x" * 10)], now=T0, charges=("s",), quota=quota)
                    for _ in range(3)]
            answers = await st.enqueue_many(reqs)
            assert answers[:2] == [[1], [2]]
            assert isinstance(answers[2], QueueFull) and answers[2].quota == "share_bytes"
            # another tag has its own share; an uncharged request is not bound by shares
            [a, b] = await st.enqueue_many([
                EnqueueRequest([(ALICE, 0, b"x" * 10)], now=T0, charges=("t",), quota=quota),
                EnqueueRequest([(ALICE, 0, b"x" * 30)], now=T0, quota=quota)])
            assert a == [3] and b == [4]
            assert await st.queue_bytes(ALICE, 0) == 60

    async def test_per_tag_bounds_and_share_exemptions(self) -> None:
        async with self.opened() as st:
            quota = QueueQuota(charge_bytes=(100, 20), share_bytes=(10, None),
                               share_exempt=frozenset({BOB}))
            answers = await st.enqueue_many([
                EnqueueRequest([(BOB, 0, b"x" * 15)], now=T0, charges=("a", "b"), quota=quota),
                EnqueueRequest([(ALICE, 0, b"x" * 11)], now=T0, charges=("a", "c"), quota=quota),
                EnqueueRequest([(ALICE, 0, b"x" * 10)], now=T0, charges=("a", "c"), quota=quota),
                EnqueueRequest([(CAROL, 0, b"x" * 6)], now=T0, charges=("a", "b"), quota=quota),
            ])
            assert answers[0] == [1]  # bob is exempt from the share bound of "a"
            assert isinstance(answers[1], QueueFull) and answers[1].quota == "share_bytes"
            assert answers[2] == [1]
            assert isinstance(answers[3], QueueFull) and answers[3].tag == "b"
            assert answers[3].quota == "charge_bytes"
            assert await st.charged_bytes("a") == 25

    @needs("reopen")
    async def test_counts_survive_reopen(self) -> None:
        async with self.opened() as st:
            await st.enqueue_many([EnqueueRequest([(ALICE, 0, b"x" * 10)], now=T0,
                                                  charges=("s",))])
            await st.add_correspondents(ALICE, [BOB])
        async with self.opened() as st:
            assert await st.queue_bytes(ALICE) == 10
            assert await st.charged_bytes("s", ALICE, 0) == 10
            assert await st.is_correspondent(ALICE, BOB)
            await st.ack(ALICE, 0, 1)
            assert await st.charged_bytes("s") == 0

    async def test_correspondents(self) -> None:
        async with self.opened() as st:
            assert not await st.is_correspondent(ALICE, BOB)
            await st.add_correspondents(ALICE, [BOB, CAROL])
            await st.add_correspondents(ALICE, [BOB])
            assert await st.is_correspondent(ALICE, BOB)
            assert await st.is_correspondent(ALICE, CAROL)
            assert not await st.is_correspondent(BOB, ALICE)

    async def test_invites_are_single_use_and_expire(self) -> None:
        async with self.opened() as st:
            await st.invite_add(b"h1" * 16, T0 + 100)
            await st.invite_add(b"h2" * 16, T0 + 100)
            assert not await st.invite_use(b"h3" * 16, now=T0)
            assert await st.invite_use(b"h1" * 16, now=T0)
            assert not await st.invite_use(b"h1" * 16, now=T0)
            assert not await st.invite_use(b"h2" * 16, now=T0 + 100)  # expired
            assert not await st.invite_use(b"h2" * 16, now=T0)  # and gone

    async def test_handoff_keeps_byte_counts_exact(self) -> None:
        """delete_user takes a handed-off user's bytes off its account and off its
        senders' charges; import_user counts the imported items (without charges)."""
        async with self.opened() as st:
            await st.enqueue_many([
                EnqueueRequest([(ALICE, 0, b"a" * 10), (ALICE, 1, b"b" * 20)], now=T0,
                               charges=("u:carol",)),
                EnqueueRequest([(BOB, 0, b"c" * 4)], now=T0, charges=("u:carol",)),
            ])
            records = await st.export_user(ALICE, limit=1000)
            assert await st.charged_bytes("u:carol") == 34
            await st.delete_user(ALICE)
            assert await _counts(st) == (0, 0, 0, 4, 0)
            assert await st.charged_bytes("u:carol", BOB, 0) == 4
            await st.import_user(ALICE, records)
            await st.import_user(ALICE, records)  # a resumed handoff: idempotent
            assert await _counts(st) == (10, 20, 30, 4, 0)
            assert await st.ack(ALICE, 1, 99) == 1
            assert await _counts(st) == (10, 0, 10, 4, 0)
