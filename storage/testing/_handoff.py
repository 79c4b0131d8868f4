"""Conformance: moving a user's home (``list_users``, ``export_user``, ``import_user``,
``delete_user``, ``media_owned``, ``media_delete``) and durable markers."""

from __future__ import annotations

import hashlib

import pytest

from ..base import UserRecord
from ._base import ALICE, BOB, ConformanceBase, needs, uid


async def _fill(st, user: str) -> list[int]:
    await st.put_device_list(user, 3, b"signed-list-v3")
    await st.add_watcher(user, BOB)
    await st.add_one_time_keys(user, 0, [("k1", b"K" * 32), ("k2", b"L" * 32), ("k3", b"M" * 32)])
    await st.set_fallback_key(user, 0, "fb", b"F" * 32)
    assert await st.claim_key(user, 0) == ("k1", b"K" * 32, False)
    seqs = await st.enqueue([(user, 0, b"env-a"), (user, 1, b"env-b")], now=1000.0)
    seqs += await st.enqueue([(user, 0, b"env-c")], now=1001.0)
    await st.ack(user, 0, seqs[0])  # device 0 keeps only env-c (seq 2)
    return seqs


async def _export_all(st, user: str, page: int = 3) -> list[UserRecord]:
    out: list[UserRecord] = []
    while True:
        batch = await st.export_user(user, start=len(out), limit=page)
        out += batch
        if len(batch) < page:
            return out


class HandoffConformance(ConformanceBase):
    """A user's whole home state moves between stores in batches; markers persist."""

    async def test_export_unknown_user_is_empty(self) -> None:
        async with self.opened() as st:
            assert await st.export_user(ALICE) == []
            assert await st.list_users() == []

    async def test_export_import_roundtrip_in_batches(self) -> None:
        async with self.opened() as src:
            await _fill(src, ALICE)
            await src.enqueue([(BOB, 0, b"bob's")])
            assert await src.list_users() == sorted([ALICE, BOB])
            assert await src.list_users(after=min(ALICE, BOB)) == [max(ALICE, BOB)]
            assert len(await src.list_users(limit=1)) == 1
            records = await _export_all(src, ALICE)
            kinds = [r.kind for r in records]
            assert kinds[0] == "list" and "watcher" in kinds and "claimed" in kinds
            assert sorted(r.value for r in records if r.kind == "item") == [b"env-b", b"env-c"]
            assert await src.delete_user(ALICE) == 2
            # only the seq counters stay (seqs are never reused)
            assert {r.kind for r in await src.export_user(ALICE)} == {"seq"}
            assert await src.list_users() == [BOB]
            assert await src.read_queue(BOB, 0) != []  # others untouched
            dst = src  # import back into the emptied home (a second store would do the same)
            for i in range(0, len(records), 4):  # import in batches, twice (idempotent)
                await dst.import_user(ALICE, records[i:i + 4], reset=i == 0)
            await dst.import_user(ALICE, records[4:8])
            assert await dst.get_device_list(ALICE) == (3, b"signed-list-v3")
            assert await dst.watchers(ALICE) == [BOB]
            assert await dst.count_one_time_keys(ALICE, 0) == 2
            assert [i.envelope for i in await dst.read_queue(ALICE, 0)] == [b"env-c"]
            assert [(i.seq, i.ts) for i in await dst.read_queue(ALICE, 0)] == [(2, 1001.0)]
            assert [i.envelope for i in await dst.read_queue(ALICE, 1)] == [b"env-b"]
            assert await dst.queue_length(ALICE, 0) == 1
            # seqs continue after the imported ones; the claimed key is never handed out
            assert await dst.enqueue([(ALICE, 0, b"new")]) == [3]
            claims = [await dst.claim_key(ALICE, 0) for _ in range(3)]
            assert [c[0] for c in claims if c] == ["k2", "k3", "fb"]
            with pytest.raises(Exception):  # noqa: B017 - DuplicateKey
                await dst.add_one_time_keys(ALICE, 0, [("k1", b"K" * 32)])
            assert await _export_all(dst, ALICE) != []
            assert await dst.delete_user(ALICE) == 3
            # the seq counter stays after a delete: a later enqueue never reuses a seq
            assert await dst.enqueue([(ALICE, 0, b"later")]) == [4]

    async def test_dedupe_ids_move_with_their_users(self) -> None:
        carol = uid("carol")
        async with self.opened() as st:
            assert await st.enqueue([(ALICE, 0, b"a0"), (ALICE, 1, b"a1")], dedupe=b"m1",
                                    now=1000.0) == [1, 1]
            await st.enqueue([(ALICE, 0, b"a"), (BOB, 0, b"b")], dedupe=b"m2", now=1001.0)
            await st.enqueue([(BOB, 0, b"b")], dedupe=b"m3", now=1002.0)
            await st.enqueue([(ALICE, 0, b"a")], dedupe=b"m4", now=1003.0)
            await st.enqueue([(ALICE, 0, b"a")], dedupe=b"old", now=1.0)
            await st.enqueue([(ALICE, 0, b"a")], now=1004.0)  # no id
            assert await st.expire(10.0) == 1  # an expired id moves no more
            await st.ack(ALICE, 0, 10)  # acknowledged copies' ids move all the same
            records = await _export_all(st, ALICE)
            assert [(r.value, r.ts) for r in records if r.kind == "dedupe"] == [
                (b"m1", 1000.0), (b"m2", 1001.0), (b"m4", 1003.0)]
            assert records[-3:] == [r for r in records if r.kind == "dedupe"]  # last
            assert [r.value for r in await _export_all(st, BOB) if r.kind == "dedupe"] == [
                b"m2", b"m3"]
            await st.delete_user(ALICE)
            assert [r for r in await st.export_user(ALICE) if r.kind == "dedupe"] == []
            # ids only alice had are gone; those bob has too stay
            assert await st.enqueue([(carol, 0, b"c")], dedupe=b"m4") == [1]
            assert await st.enqueue([(carol, 0, b"c")], dedupe=b"m1") == [2]
            assert await st.enqueue([(carol, 0, b"c")], dedupe=b"m2") is None
            assert await st.enqueue([(carol, 0, b"c")], dedupe=b"old") == [3]
            await st.delete_user(carol)
            # the new home: a sender's retry for alice is a duplicate again
            await st.import_user(ALICE, records[:2], reset=True)
            await st.import_user(ALICE, records[2:])
            await st.import_user(ALICE, records[-2:])  # idempotent
            for dd in (b"m1", b"m2", b"m4"):
                assert await st.enqueue([(ALICE, 0, b"again")], dedupe=dd) is None, dd
            assert [(r.value, r.ts) for r in await _export_all(st, ALICE)
                    if r.kind == "dedupe"] == [(b"m1", 1000.0), (b"m2", 1001.0), (b"m4", 1003.0)]
            assert [r.value for r in await _export_all(st, BOB) if r.kind == "dedupe"] == [
                b"m2", b"m3"]
            # expiry forgets the links with the ids
            await st.expire(1001.5)
            assert [r.value for r in await _export_all(st, ALICE) if r.kind == "dedupe"] == [
                b"m4"]
            assert [r.value for r in await _export_all(st, BOB) if r.kind == "dedupe"] == [
                b"m3"]
            with pytest.raises(ValueError):
                await st.import_user(ALICE, [UserRecord("dedupe", value=b"")])

    async def test_an_imported_dedupe_id_answers_only_for_its_users(self) -> None:
        """An id that only a handoff brought is a duplicate for its users alone: another
        part of the same message, for users of the new home that had no copy yet, is
        still stored (nothing lost), and from then on the id is a duplicate for all."""
        carol = uid("carol")
        async with self.opened() as st:
            await st.enqueue([(BOB, 0, b"b")], dedupe=b"full", now=50.0)
            await st.import_user(ALICE, [UserRecord("dedupe", ts=100.0, value=b"moved"),
                                         UserRecord("dedupe", ts=40.0, value=b"full")])
            assert await st.enqueue([(ALICE, 0, b"again")], dedupe=b"moved") is None
            assert await st.enqueue([(ALICE, 1, b"again")], dedupe=b"moved") is None
            assert await st.enqueue([(BOB, 0, b"late part")], dedupe=b"moved") == [2]
            assert await st.enqueue([(BOB, 0, b"b")], dedupe=b"moved") is None
            assert await st.enqueue([(carol, 0, b"c")], dedupe=b"moved") is None
            assert await st.enqueue([(carol, 0, b"c")], dedupe=b"full") is None
            assert [i.envelope for i in await st.read_queue(BOB, 0)] == [b"b", b"late part"]
            assert await st.read_queue(ALICE, 0) == [] and await st.read_queue(carol, 0) == []
            ids = {r.value: r.ts for r in await _export_all(st, BOB) if r.kind == "dedupe"}
            assert ids == {b"full": 50.0, b"moved": 100.0}
            await st.expire(101.0)
            assert await st.enqueue([(ALICE, 0, b"new")], dedupe=b"moved") == [1]

    async def test_export_pages_are_slices_of_the_whole_export(self) -> None:
        async with self.opened() as st:
            await _fill(st, ALICE)
            await st.add_one_time_keys(ALICE, 3, [("x", b"X" * 32)])
            for i in range(40):
                await st.enqueue([(ALICE, 0, b"a%d" % i), (ALICE, 3, b"c%d" % i)],
                                 dedupe=b"id%02d" % i)
            whole = await st.export_user(ALICE, limit=10**6)
            assert len(whole) > 100 and whole[-1].kind == "dedupe"
            for size in (1, 7, 50):
                assert await _export_all(st, ALICE, page=size) == whole, size
            assert await st.export_user(ALICE, start=len(whole)) == []
            assert await st.export_user(ALICE, start=5, limit=0) == []

    async def test_import_reset_replaces_partial_state(self) -> None:
        async with self.opened() as st:
            await st.enqueue([(ALICE, 0, b"stale")])
            await st.put_device_list(ALICE, 9, b"old")
            await st.import_user(ALICE, [UserRecord("item", 0, seq=7, ts=5.0, value=b"x")],
                                 reset=True)
            assert [(i.seq, i.envelope) for i in await st.read_queue(ALICE, 0)] == [(7, b"x")]
            assert await st.get_device_list(ALICE) is None
            assert await st.enqueue([(ALICE, 0, b"y")]) == [8]

    async def test_import_rejects_bad_records(self) -> None:
        async with self.opened() as st:
            with pytest.raises(ValueError):
                await st.import_user(ALICE, [UserRecord("bogus")])
            assert await st.export_user(ALICE) == []

    async def test_media_owned_and_delete(self) -> None:
        async with self.opened() as st:
            blobs = {}
            for i, owner in enumerate((ALICE, ALICE, BOB)):
                data = f"blob {i}".encode()
                media_id = hashlib.sha256(data).digest()
                await st.media_append(media_id, len(data), 0, data, owner=owner)
                blobs[media_id] = owner
            half = hashlib.sha256(b"unfinished!").digest()
            await st.media_append(half, 11, 0, b"unfin", owner=ALICE)
            mine = sorted(m for m, o in blobs.items() if o == ALICE)
            assert await st.media_owned(ALICE) == mine
            assert await st.media_owned(ALICE, after=mine[0]) == mine[1:]
            assert await st.media_owned(ALICE, limit=1) == mine[:1]
            assert await st.media_delete(mine[0]) is True
            assert await st.media_delete(mine[0]) is False
            assert await st.media_status(mine[0]) is None
            assert await st.media_read(mine[0], 0, 10) is None
            assert await st.media_owned(ALICE) == mine[1:]
            assert await st.media_delete(half) is True
            assert await st.media_usage() == sum(len(f"blob {i}") for i in (1, 2))

    async def test_marks(self) -> None:
        async with self.opened() as st:
            assert await st.get_mark("handoff/in/x") is None
            await st.set_mark("handoff/in/x", b"1")
            await st.set_mark("handoff/in/y", b"2")
            await st.set_mark("other", b"3")
            assert await st.marks("handoff/") == {"handoff/in/x": b"1", "handoff/in/y": b"2"}
            await st.set_mark("handoff/in/x", None)
            assert await st.get_mark("handoff/in/x") is None
            with pytest.raises(ValueError):
                await st.set_mark("", b"")

    @needs("reopen")
    async def test_import_and_marks_survive_reopen(self) -> None:
        user = uid("carol")
        async with self.opened() as st:
            await st.import_user(user, [UserRecord("list", seq=1, value=b"l"),
                                        UserRecord("item", 2, seq=4, ts=1.0, value=b"e")])
            await st.set_mark("m", b"v")
        async with self.opened() as st:
            assert await st.get_mark("m") == b"v"
            assert await st.get_device_list(user) == (1, b"l")
            assert [i.seq for i in await st.read_queue(user, 2)] == [4]
