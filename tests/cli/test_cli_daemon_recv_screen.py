"""Exactly once on screen through the daemon (docs/cli.md, docs/reliability.md finding
19): ``wa-cli recv`` on a home that ``wa-cli daemon`` serves confirms each event once
its line was taken by the reader of stdout, so the daemon keeps what was not shown
for the next ``recv``. Before, the daemon counted an event shown once written to the
``recv`` process: a reader that closed stdout (``recv | head -n 1``), a Ctrl-C or a
SIGKILL lost the rest from the screen for good. Real ``wa-cli`` processes (daemon,
recv, send) against an in-process node on 127.0.0.1."""

from __future__ import annotations

import fcntl
import signal
import struct
import termios
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import trio
from cli_procs import Running, lines, wa
from test_cli_daemon import start_daemon, two_accounts

from relay.testing import open_local_cluster

DEADLINE = 60
POLL = 0.01  # seconds between looks at the pipe


def texts(got: list[dict]) -> list[tuple[str, bool]]:
    """``(text, maybe_shown)`` of the text messages among ``recv --json`` lines."""
    return [(g["text"], bool(g.get("maybe_shown"))) for g in got if g["type"] == "text"]


def unread(stream) -> int:  # noqa: ANN001 (a trio FdStream of our read end of a pipe)
    return struct.unpack("i", fcntl.ioctl(stream.fileno(), termios.FIONREAD, b"\0" * 4))[0]


@asynccontextmanager
async def backlog_recv(tmp_path: Path, sent: list[str], *recv_args: str,
                       first: int = 1) -> AsyncIterator[tuple[Running, list[str]]]:
    """bob's daemon, ``sent`` from alice waiting, and a ``recv --json RECV_ARGS`` through
    the daemon whose first ``first`` lines were read: ``(recv, their texts)``."""
    daemon = recv = None
    try:
        with trio.fail_after(DEADLINE):
            async with open_local_cluster(1) as cluster:
                await two_accounts(tmp_path, cluster.urls["n1"])
                daemon, _ = await start_daemon(tmp_path / "b")
                for text in sent:
                    await wa(tmp_path / "a", "send", "bob", text)
                recv = await Running.start(tmp_path / "b", "--json", "recv", *recv_args)
                yield recv, [(await recv.json())["text"] for _ in range(first)]
    finally:
        for proc in (recv, daemon):
            if proc is not None:
                await proc.aclose()


async def rest(tmp_path: Path) -> list[tuple[str, bool]]:
    """What the next ``recv`` shows: ``(text, maybe_shown)``."""
    return texts(lines(await wa(tmp_path / "b", "--json", "recv", "--timeout", "0.5")))


async def test_a_reader_that_closes_stdout_leaves_the_rest_for_the_next_recv(tmp_path):
    async with backlog_recv(tmp_path, ["t1", "t2", "t3"], "--timeout", "2") as (recv, first):
        assert first == ["t1"]
        await recv.proc.stdout.aclose()  # as `head -n 1` does after its line
        code, err = await recv.finish()
        assert code == 0, err
        assert "the output was closed" in err, err
        assert await rest(tmp_path) == [("t2", False), ("t3", False)]


async def test_ctrl_c_before_the_reader_took_a_line_shows_it_again_flagged(tmp_path):
    async with backlog_recv(tmp_path, ["t1", "t2", "t3"], "--timeout", "2") as (recv, first):
        assert first == ["t1"]
        while not unread(recv.proc.stdout):  # noqa: ASYNC110 - poll, deadline above
            await trio.sleep(POLL)  # t2 is written; recv waits for us to take it
        recv.proc.send_signal(signal.SIGINT)
        code, err = await recv.finish()
        assert code == 130, err
        # t2 may have reached the screen (it is in the pipe): shown again, flagged
        assert await rest(tmp_path) == [("t2", True), ("t3", False)]


BACKLOG = [f"m{i}" for i in range(12)]


def nothing_lost_or_silently_repeated(first: list[str], again: list[tuple[str, bool]]) -> None:
    repeats = [t for t, flagged in again if t in first and not flagged]
    assert repeats == [], (first, again)
    union = first + [t for t, _ in again if t not in first]
    assert union == BACKLOG, (first, again)  # nothing lost from the screen, in order


async def test_a_reader_that_stops_after_three_of_a_backlog_loses_nothing(tmp_path):
    async with backlog_recv(tmp_path, BACKLOG, "--timeout", "2", first=3) as (recv, first):
        await recv.proc.stdout.aclose()  # like `recv | head -n 3`
        await recv.proc.wait()
        nothing_lost_or_silently_repeated(first, await rest(tmp_path))


async def test_recv_follow_killed_after_three_of_a_backlog_loses_nothing(tmp_path):
    async with backlog_recv(tmp_path, BACKLOG, "--follow", first=3) as (recv, first):
        recv.proc.send_signal(signal.SIGKILL)
        await recv.proc.wait()
        nothing_lost_or_silently_repeated(first, await rest(tmp_path))
