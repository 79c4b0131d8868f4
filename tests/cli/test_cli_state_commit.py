"""Group commit of the device state, the send order, and state format 2 (seen ids and
history packed once); pipelined sends over in-process nodes all decrypt."""

from __future__ import annotations

from contextlib import ExitStack

import msgpack
import pytest
import trio
from cli_cluster import new_account, publish, run_cluster

from cli.client import open_client
from cli.events import BacklogDone, Dropped, Message
from cli.features import payload
from cli.session import crypto, vault
from cli.session.journal import JOURNAL_FILE
from cli.session.sendorder import SendOrder
from cli.session.state import SEEN_LIMIT, STATE_FILE, create_state, open_state, seen_key
from cli.session.statecodec import HistoryTracker, SeenIds

DEADLINE = 30


def _home(tmp_path):
    home = tmp_path / "alice"
    with create_state(home, name="alice", relay_url="ws://127.0.0.1:1"):
        pass
    return home


async def test_concurrent_saves_share_one_write(tmp_path):
    with trio.fail_after(DEADLINE), open_state(_home(tmp_path)) as state:
        before = state.writes

        async def change_and_save(i: int) -> None:
            state.contacts[f"c{i}"] = "u" * 52
            await state.asave()

        async with trio.open_nursery() as nursery:
            for i in range(50):
                nursery.start_soon(change_and_save, i)
        # the first caller writes alone; the 49 that came during its write share one
        assert state.writes - before == 2
    with open_state(tmp_path / "alice") as state:
        assert len(state.contacts) == 50


async def test_a_failed_write_reaches_its_leader_and_the_others_retry(tmp_path, monkeypatch):
    real = vault.write_atomic
    calls: list[int] = []

    def flaky(path, data, mode=0o600):
        calls.append(len(data))
        if len(calls) == 1:
            raise OSError(28, "No space left on device")
        real(path, data, mode)

    with trio.fail_after(DEADLINE), open_state(_home(tmp_path)) as state:
        monkeypatch.setattr(vault, "write_atomic", flaky)
        outcomes: list[str] = []

        async def save(i: int) -> None:
            state.contacts[f"c{i}"] = "u" * 52
            try:
                await state.asave()
            except OSError as exc:
                outcomes.append(f"error {exc.errno}")
            else:
                outcomes.append("ok")

        async with trio.open_nursery() as nursery:
            for i in range(5):
                nursery.start_soon(save, i)
        assert sorted(outcomes) == ["error 28"] + ["ok"] * 4
        assert len(calls) == 2
    with open_state(tmp_path / "alice") as state:
        assert len(state.contacts) == 5


async def test_blocking_save_refused_while_an_async_write_runs(tmp_path):
    with trio.fail_after(DEADLINE), open_state(_home(tmp_path)) as state:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(state.asave)
            await trio.testing.wait_all_tasks_blocked()
            with pytest.raises(RuntimeError, match="while an async write runs"):
                state.save()


async def test_send_order_follows_places_not_wake_order():
    order = SendOrder()
    written: list[int] = []

    async def write(place: int, give_up: bool = False) -> None:
        try:
            await order.wait_turn(place)
            if not give_up:
                written.append(place)
        finally:
            order.done(place)

    with trio.fail_after(DEADLINE):
        places = [order.take() for _ in range(20)]
        async with trio.open_nursery() as nursery:
            for place in reversed(places):  # started last to first
                nursery.start_soon(write, place, place == 7)
        assert written == [p for p in places if p != 7]

        late = order.take()
        with trio.move_on_after(0.01):  # nothing before it is pending: no wait at all
            await order.wait_turn(late)
            written.append(late)
        order.done(late)
        assert written[-1] == late


async def test_send_order_cancelled_waiter_lets_the_next_go():
    order = SendOrder()
    first, second, third = order.take(), order.take(), order.take()
    reached: list[int] = []

    async def sender(place: int) -> None:
        await order.wait_turn(place)
        reached.append(place)
        order.done(place)

    async def gives_up(task_status=trio.TASK_STATUS_IGNORED) -> None:
        with trio.CancelScope() as scope:
            task_status.started(scope)
            try:
                await order.wait_turn(second)
            finally:
                order.done(second)

    with trio.fail_after(DEADLINE):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(sender, third)
            (await nursery.start(gives_up)).cancel()
            await trio.testing.wait_all_tasks_blocked()
            assert reached == []  # the third still waits for the first
            order.done(first)
        assert reached == [third]


def test_seen_ids_bounded_and_round_trip():
    seen = SeenIds(3)
    keys = [bytes([i]) * 16 for i in range(5)]
    assert all(seen.add(k) for k in keys)
    assert not seen.add(keys[4])
    assert list(seen) == keys[2:] and len(seen) == 3 and keys[1] not in seen
    again = SeenIds.from_bytes(3, seen.to_bytes())
    assert list(again) == keys[2:]
    with pytest.raises(ValueError):
        seen.add(b"short")
    with pytest.raises(ValueError):
        SeenIds.from_bytes(3, b"x" * 17)


def test_history_tracker_reports_new_and_changed_entries_until_saved():
    tracker = HistoryTracker()
    history = [{"id": "a"}, {"id": "b"}]
    items = tracker.unsaved(history)
    assert HistoryTracker.wire(items) == [[0, {"id": "a"}], [1, {"id": "b"}]]
    history[0]["n"] = 1
    tracker.changed(history[0])  # changed while its first version is being written
    tracker.saved(items)
    assert HistoryTracker.wire(tracker.unsaved(history)) == [[0, {"id": "a", "n": 1}]]
    tracker.saved(tracker.unsaved(history))
    history.append({"id": "c"})
    assert HistoryTracker.wire(tracker.unsaved(history)) == [[2, {"id": "c"}]]


def test_history_change_in_place_is_saved(tmp_path):
    home = _home(tmp_path)
    with open_state(home) as state:
        state.history.append({"id": "01" * 16, "direction": "in", "file": {"path": None}})
        state.save()
        entry = state.find_history("01" * 16)
        entry["file"]["path"] = "/tmp/x"
        state.history_changed(entry)
        state.save()
    with open_state(home) as state:
        assert state.find_history("01" * 16)["file"] == {"path": "/tmp/x"}


def test_reads_format_1_state(tmp_path):
    home = _home(tmp_path)
    with open_state(home) as state:
        m = state._to_map()
        m.update(format=1, seen=[seen_key("s", b"\x02" * 16)],
                 history=[{"id": "02" * 16, "direction": "out", "text": "old"}])
        vault.write_atomic(home / STATE_FILE,
                           state._store.seal(msgpack.packb(m, use_bin_type=True)))
    with open_state(home) as state:
        assert state.find_history("02" * 16)["text"] == "old"
        assert not state.mark_seen(seen_key("s", b"\x02" * 16))
        assert len(state.seen) == 1 and SEEN_LIMIT > 1
        state.save()  # moves history and seen ids to the journal
    assert (home / JOURNAL_FILE).exists()
    with open_state(home) as state:
        assert state.find_history("02" * 16)["text"] == "old"
        assert seen_key("s", b"\x02" * 16) in state.seen


async def test_pipelined_sends_all_decrypt_in_order_with_shared_saves(tmp_path, monkeypatch):
    """64 sends in flight from one client: every copy reaches the live recipient in
    encryption order (Olm would drop copies far out of order), and saves are shared."""
    n = 64
    encrypted: list[str] = []
    real_encrypt = crypto.encrypt

    def recording_encrypt(session, plaintext):
        encrypted.append(payload.decode(plaintext).text)
        return real_encrypt(session, plaintext)

    monkeypatch.setattr(crypto, "encrypt", recording_encrypt)
    with trio.fail_after(DEADLINE), ExitStack() as stack:
        async with run_cluster(3) as cluster:
            alice = new_account(tmp_path, "alice", cluster.urls["n1"], stack)
            bob = new_account(tmp_path, "bob", cluster.urls["n2"], stack)
            await publish(bob)
            async with open_client(alice) as a, open_client(bob) as b:
                await a.send_text(bob.user_id, "warm-up")  # claims a key: one session
                texts = [f"m{i:03d}" for i in range(n)]
                writes = alice.writes
                async with trio.open_nursery() as nursery:
                    for text in texts:
                        nursery.start_soon(a.send_text, bob.user_id, text)
                assert alice.writes - writes < n
                got: list[str] = []
                async for event in b.receive():
                    assert not isinstance(event, Dropped), event
                    if isinstance(event, Message):
                        got.append(event.text)
                    if isinstance(event, BacklogDone) or len(got) == n + 1:
                        break
                assert got[0] == "warm-up" and sorted(got[1:]) == texts
                assert got == encrypted  # Bob has no other device: one copy per message
