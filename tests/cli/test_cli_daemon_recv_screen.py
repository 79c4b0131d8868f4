"""Exactly once on screen through the daemon (docs/cli.md): ``wa-cli recv`` on a home
that ``wa-cli daemon`` serves confirms each event once its line was taken by the
reader of stdout, so the daemon keeps what was not shown for the next ``recv``.
Before, the daemon counted an event shown once written to the ``recv`` process: a
reader that closed stdout (``recv | head -n 1``) or a Ctrl-C during a download lost
the rest from the screen for good. Real ``wa-cli`` processes (daemon, recv, send)
against an in-process node on 127.0.0.1."""

from __future__ import annotations

import fcntl
import signal
import struct
import termios

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


async def test_a_reader_that_closes_stdout_leaves_the_rest_for_the_next_recv(tmp_path):
    daemon = recv = None
    try:
        with trio.fail_after(DEADLINE):
            async with open_local_cluster(1) as cluster:
                await two_accounts(tmp_path, cluster.urls["n1"])
                daemon, _ = await start_daemon(tmp_path / "b")
                for text in ("t1", "t2", "t3"):
                    await wa(tmp_path / "a", "send", "bob", text)
                recv = await Running.start(tmp_path / "b", "--json", "recv", "--timeout", "2")
                assert (await recv.json())["text"] == "t1"
                await recv.proc.stdout.aclose()  # as `head -n 1` does after its line
                code, err = await recv.finish()
                assert code == 0, err
                assert "the output was closed" in err, err
                got = lines(await wa(tmp_path / "b", "--json", "recv", "--timeout", "0.5"))
                assert texts(got) == [("t2", False), ("t3", False)], got
    finally:
        for proc in (recv, daemon):
            if proc is not None:
                await proc.aclose()


async def test_ctrl_c_before_the_reader_took_a_line_shows_it_again_flagged(tmp_path):
    daemon = recv = None
    try:
        with trio.fail_after(DEADLINE):
            async with open_local_cluster(1) as cluster:
                await two_accounts(tmp_path, cluster.urls["n1"])
                daemon, _ = await start_daemon(tmp_path / "b")
                for text in ("t1", "t2", "t3"):
                    await wa(tmp_path / "a", "send", "bob", text)
                recv = await Running.start(tmp_path / "b", "--json", "recv", "--timeout", "2")
                assert (await recv.json())["text"] == "t1"
                while not unread(recv.proc.stdout):  # noqa: ASYNC110 - poll, deadline above
                    await trio.sleep(POLL)  # t2 is written; recv waits for us to take it
                recv.proc.send_signal(signal.SIGINT)
                code, err = await recv.finish()
                assert code == 130, err
                got = lines(await wa(tmp_path / "b", "--json", "recv", "--timeout", "0.5"))
                # t2 may have reached the screen (it is in the pipe): shown again, flagged
                assert texts(got) == [("t2", True), ("t3", False)], got
    finally:
        for proc in (recv, daemon):
            if proc is not None:
                await proc.aclose()
