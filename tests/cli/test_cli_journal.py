"""cli.journal: history and dedupe keys appended to journal.bin (sealed records),
replayed on open, compacted, torn tails dropped, corruption refused, crash orders."""

from __future__ import annotations

import pytest
import trio

from cli.session import journal, vault
from cli.session.journal import JOURNAL_FILE
from cli.session.state import (
    HISTORY_LIMIT,
    STATE_FILE,
    StateError,
    create_state,
    open_state,
    seen_key,
)


def _entry(i: int, text: str = "t") -> dict:
    return {"id": f"{i:032x}", "direction": "in", "text": f"{text}{i}"}


def _home(tmp_path):
    home = tmp_path / "alice"
    with create_state(home, name="alice", relay_url="ws://127.0.0.1:1"):
        pass
    return home


def _texts(state) -> list[str]:
    return [e["text"] for e in state.history]


def test_saves_append_small_records_and_reopen_replays_them(tmp_path):
    home = _home(tmp_path)
    with open_state(home) as state:
        sizes = []
        for i in range(5):
            state.history.append(_entry(i, "x" * 200))
            state.mark_seen(seen_key("s", i.to_bytes(16, "big")))
            state.save()
            sizes.append((home / JOURNAL_FILE).stat().st_size)
        steps = [b - a for a, b in zip(sizes, sizes[1:], strict=False)]
        assert all(200 < step < 600 for step in steps), steps  # one entry + one key each
        state.history[1]["text"] = "changed"
        state.history_changed(state.history[1])
        state.save()
    with open_state(home) as state:
        assert _texts(state) == ["x" * 200 + "0", "changed"] + ["x" * 200 + f"{i}"
                                                               for i in (2, 3, 4)]
        assert all(seen_key("s", i.to_bytes(16, "big")) in state.seen for i in range(5))
        assert len(state.seen) == 5
        assert b"x" * 200 not in (home / JOURNAL_FILE).read_bytes()  # sealed
        assert b"changed" not in (home / JOURNAL_FILE).read_bytes()


def test_history_limit_applies_after_replay(tmp_path):
    home = _home(tmp_path)
    with open_state(home) as state:
        for i in range(HISTORY_LIMIT + 20):
            state.history.append(_entry(i))
            if i % 50 == 0:
                state.save()
        state.save()
    with open_state(home) as state:
        assert _texts(state) == [f"t{i}" for i in range(20, HISTORY_LIMIT + 20)]
        state.history.append(_entry(10_000))
        state.save()
    with open_state(home) as state:
        assert _texts(state)[-1] == "t10000" and len(state.history) == HISTORY_LIMIT


def test_compaction_rewrites_the_journal_as_one_base_record(tmp_path, monkeypatch):
    monkeypatch.setattr(journal, "COMPACT_MIN", 2000)
    home = _home(tmp_path)
    with open_state(home) as state:
        sizes = []
        for i in range(40):
            state.history.append(_entry(i, "y" * 100))
            state.save()
            sizes.append((home / JOURNAL_FILE).stat().st_size)
        assert any(b < a for a, b in zip(sizes, sizes[1:], strict=False))  # compacted
        assert max(sizes) <= 4 * 2000 + 1000
    with open_state(home) as state:
        assert _texts(state) == ["y" * 100 + f"{i}" for i in range(40)]


def test_torn_last_record_is_dropped_and_later_saves_are_kept(tmp_path):
    home = _home(tmp_path)
    with open_state(home) as state:
        state.history.append(_entry(1))
        state.save()
        state.history.append(_entry(2))
        state.save()
    data = (home / JOURNAL_FILE).read_bytes()
    (home / JOURNAL_FILE).write_bytes(data[:-7])  # a crash in the middle of the append
    with open_state(home) as state:
        assert _texts(state) == ["t1"]
        assert (home / JOURNAL_FILE).stat().st_size < len(data) - 7  # truncated
        state.history.append(_entry(3))
        state.save()
    with open_state(home) as state:
        assert _texts(state) == ["t1", "t3"]


def test_a_corrupt_complete_record_is_an_error(tmp_path):
    home = _home(tmp_path)
    with open_state(home) as state:
        state.history.append(_entry(1))
        state.save()
    data = bytearray((home / JOURNAL_FILE).read_bytes())
    data[10] ^= 1
    (home / JOURNAL_FILE).write_bytes(bytes(data))
    with pytest.raises(StateError, match="corrupt history journal"):
        with open_state(home):
            pass


def test_crash_between_journal_and_state_file_loses_nothing(tmp_path, monkeypatch):
    """The journal is written first: a crash before state.bin is replaced leaves the
    new history with the old keys (the envelope was not acknowledged: redelivered,
    deduped), never advanced ratchets without the history."""
    home = _home(tmp_path)
    real = vault.write_atomic

    def crash_on_state_file(path, data, mode=0o600):
        if path.name == STATE_FILE:
            raise OSError(5, "crash")
        real(path, data, mode)

    with open_state(home) as state:
        state.history.append(_entry(1))
        state.mark_seen(seen_key("s", b"\x01" * 16))
        monkeypatch.setattr(vault, "write_atomic", crash_on_state_file)
        with pytest.raises(OSError):
            state.save()
    monkeypatch.setattr(vault, "write_atomic", real)
    with open_state(home) as state:
        assert _texts(state) == ["t1"] and seen_key("s", b"\x01" * 16) in state.seen


async def test_failed_append_is_retried_and_then_compacts(tmp_path, monkeypatch):
    home = _home(tmp_path)
    calls = []
    real_append = journal.Journal.append

    def failing_once(self, plain):
        calls.append(len(plain))
        if len(calls) == 1:
            self.rewrite = True
            raise OSError(28, "No space left on device")
        real_append(self, plain)

    monkeypatch.setattr(journal.Journal, "append", failing_once)
    with trio.fail_after(10), open_state(home) as state:
        state.history.append(_entry(1))
        with pytest.raises(OSError):
            await state.asave()
        state.history.append(_entry(2))
        await state.asave()  # a base record with both entries (the append was not retried)
        assert len(calls) == 1
        state.history.append(_entry(3))
        await state.asave()
        assert len(calls) == 2
    with open_state(home) as state:
        assert _texts(state) == ["t1", "t2", "t3"]
