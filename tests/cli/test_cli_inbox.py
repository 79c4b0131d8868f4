"""cli.inbox and cli.linesink: received events kept in the sealed state until shown,
marks that survive the process, "taken" meaning read by a pipe's reader."""

from __future__ import annotations

import os

import pytest
import trio

from cli.commands.linesink import LineSink, ReaderGone
from cli.events import Bounce, DevicesChanged, GroupChanged, Message
from cli.session import journal
from cli.session.inbox import SHOWN_FILE, from_record, to_record
from cli.session.state import create_state, open_state


def _msg(i: int, text: str = "hello") -> Message:
    return Message(i.to_bytes(16, "big"), "alice-id", 0, "in", "alice-id", 1000 + i, "text",
                   f"{text} {i}", "alice", "alice")


def _home(tmp_path):
    home = tmp_path / "bob"
    with create_state(home, name="bob", relay_url="ws://127.0.0.1:1"):
        pass
    return home


def _texts(state) -> list[str]:
    return [p.event.text for p in state.inbox.pending()]


def test_every_kept_event_type_round_trips_through_a_record():
    events = [
        _msg(1),
        Message(b"\x02" * 16, "a", 3, "out", "g", 5, "text", "t", "me", "me", "team", "ab" * 16),
        Bounce(b"\x03" * 16, "u", "queue_full", "full", resent_status="stored"),
        DevicesChanged("u", "bob", 4, ((1, "phone"), (2, "laptop")), ((0, "old"),)),
        GroupChanged("ab" * 16, "team", 2, "u", ("x", "y"), (), False),
    ]
    for event in events:
        assert from_record(to_record(event)) == event
    with pytest.raises(TypeError):
        to_record("not an event")  # type: ignore[arg-type]


def test_kept_events_survive_a_reopen_sealed_and_shown_ones_leave(tmp_path):
    home = _home(tmp_path)
    with open_state(home) as state:
        for i in range(5):
            state.inbox.keep(_msg(i, "secret-text"))
        state.save()
        first = state.inbox.pending()[0]
        state.inbox.showing(first.n)
        state.inbox.shown(first.n)  # a mark only: no save
    for name in (journal.JOURNAL_FILE, SHOWN_FILE):
        assert b"secret-text" not in (home / name).read_bytes()
    with open_state(home) as state:  # the mark applies although nothing was saved
        assert _texts(state) == [f"secret-text {i}" for i in range(1, 5)]
        assert not any(p.maybe_shown for p in state.inbox.pending())
        state.save()
        state.inbox.reset_marks()
    assert not (home / SHOWN_FILE).exists()
    with open_state(home) as state:  # the journal now says it
        assert _texts(state) == [f"secret-text {i}" for i in range(1, 5)]


def test_an_event_announced_but_not_marked_shown_comes_back_flagged(tmp_path):
    home = _home(tmp_path)
    with open_state(home) as state:
        for i in range(3):
            state.inbox.keep(_msg(i))
        state.save()
        a, b, _ = state.inbox.pending()
        state.inbox.showing(a.n)
        state.inbox.shown(a.n)
        state.inbox.showing(b.n)  # killed here: b may or may not be on screen
    with open_state(home) as state:
        pending = state.inbox.pending()
        assert [(p.event.text, p.maybe_shown) for p in pending] == [("hello 1", True),
                                                                    ("hello 2", False)]
        state.save()  # the flag moves into the journal, so the marks may go
        state.inbox.reset_marks()
    with open_state(home) as state:
        assert [p.maybe_shown for p in state.inbox.pending()] == [True, False]


def test_a_withdrawn_event_is_not_flagged_and_settle_flags_the_announced_one(tmp_path):
    home = _home(tmp_path)
    with open_state(home) as state:
        for i in range(2):
            state.inbox.keep(_msg(i))
        state.save()
        a, b = state.inbox.pending()
        state.inbox.showing(a.n)
        state.inbox.withdraw(a.n)  # the reader closed the pipe first
        state.inbox.showing(b.n)
        with pytest.raises(RuntimeError):
            state.inbox.reset_marks()
        state.inbox.settle()  # Ctrl-C and the reader did not take b in time
        state.save()
        state.inbox.reset_marks()
    with open_state(home) as state:
        assert [(p.event.text, p.maybe_shown) for p in state.inbox.pending()] == [
            ("hello 0", False), ("hello 1", True)]


def test_numbers_are_never_reused_so_old_marks_never_hide_new_events(tmp_path):
    home = _home(tmp_path)
    with open_state(home) as state:
        state.inbox.keep(_msg(0))
        state.save()
        (p,) = state.inbox.pending()
        state.inbox.showing(p.n)
        state.inbox.shown(p.n)
        state.save()  # the inbox is empty in the journal; the mark stays in shown.bin
    with open_state(home) as state:
        assert len(state.inbox) == 0
        n = state.inbox.keep(_msg(1))
        assert n > p.n
        state.save()
    with open_state(home) as state:
        assert _texts(state) == ["hello 1"]


def test_a_torn_marks_file_shows_again_what_the_torn_part_marked(tmp_path):
    home = _home(tmp_path)
    with open_state(home) as state:
        for i in range(3):
            state.inbox.keep(_msg(i))
        state.save()
        for p in state.inbox.pending()[:2]:
            state.inbox.showing(p.n)
            state.inbox.shown(p.n)
    data = (home / SHOWN_FILE).read_bytes()
    (home / SHOWN_FILE).write_bytes(data[:-5])  # the last mark (shown 1) torn
    with open_state(home) as state:
        assert [(p.event.text, p.maybe_shown) for p in state.inbox.pending()] == [
            ("hello 1", True), ("hello 2", False)]


def test_compaction_keeps_the_inbox(tmp_path, monkeypatch):
    home = _home(tmp_path)
    with open_state(home) as state:
        for i in range(4):
            state.inbox.keep(_msg(i))
        state.save()
        state.inbox.showing(0)
        state.inbox.shown(0)
        monkeypatch.setattr(journal.Journal, "should_compact", lambda self: True)
        state.save()
        state.inbox.reset_marks()
    monkeypatch.undo()
    with open_state(home) as state:
        assert _texts(state) == [f"hello {i}" for i in (1, 2, 3)]
        assert state.inbox.next_n == 4


async def test_a_pipe_line_is_taken_only_once_the_reader_read_it():
    read_fd, write_fd = os.pipe()
    with os.fdopen(write_fd, "w") as out, os.fdopen(read_fd, "rb", buffering=0) as reader:
        sink = LineSink(out)
        assert sink.watched
        sink.write("one")
        assert sink.unread() == 4
        with trio.move_on_after(0.05) as waited:
            await sink.taken()
        assert waited.cancelled_caught  # nobody read it yet
        assert reader.read(2) == b"on"
        assert sink.unread() == 2
        assert reader.read(2) == b"e\n"
        with trio.fail_after(2):
            await sink.taken()
        sink.write("two")
        reader.close()  # like head -n 1: stops reading and exits
        with trio.fail_after(2), pytest.raises(ReaderGone):
            await sink.taken()
        with pytest.raises(ReaderGone):
            sink.write("three")
        devnull = os.open(os.devnull, os.O_WRONLY)  # what recv does: drop the buffered rest
        os.dup2(devnull, out.fileno())
        os.close(devnull)


@pytest.fixture
def out_file(tmp_path):
    with open(tmp_path / "out.txt", "w") as out:
        yield out


async def test_a_file_is_taken_when_written(out_file, tmp_path):
    sink = LineSink(out_file)
    assert not sink.watched
    sink.write("line")
    with trio.fail_after(1):
        await sink.taken()
    assert (tmp_path / "out.txt").read_text() == "line\n"
