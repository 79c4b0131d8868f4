"""The fault suite's ``wa-cli`` fork server (faults/zygote.py, faults/launch.py): forked
commands behave as exec'd ones for what the suite looks at (output, exit code,
signals, a closed stdout), each in its own process."""

from __future__ import annotations

import signal

import trio

from faults.clients import Interrupt, run_cli
from faults.launch import Zygote

DEADLINE = 60


async def test_forked_commands_print_exit_and_die_like_exec_ones(tmp_path):
    zygote = Zygote()
    try:
        with trio.fail_after(DEADLINE):
            await zygote.start()
            home = tmp_path / "h"
            forked = await run_cli(home, ("id",), launcher=zygote)
            execd = await run_cli(home, ("id",))
            assert forked.code == execd.code == 1  # no account here: a runtime failure
            assert forked.lines == execd.lines and forked.lines[0]["error"]["code"] == "failed"
            # each command is its own process: a SIGKILL ends that one (exit -9); here a
            # link that waits for a WebSocket answer that never comes
            listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
            port = listener.socket.getsockname()[1]
            killed = await run_cli(home, ("link", "--relay", f"wss://127.0.0.1:{port}",
                                          "--name", "x"), launcher=zygote,
                                   interrupt=Interrupt(signal.SIGKILL, 0.5))
            assert killed.interrupted and killed.code == -signal.SIGKILL, killed
            await listener.aclose()
            # the command's environment, not the fork server's
            bad = await run_cli(home, ("id",), launcher=zygote,
                                env={"WA_CONNECT_TIMEOUT": "abc"})
            assert bad.code == 2 and "--connect-timeout" in bad.stderr, bad
            again = await run_cli(home, ("id",), launcher=zygote)
            assert again.code == 1  # the server keeps forking after a killed child
            # an argv longer than one socket write (the line's tail follows its fds)
            long = await run_cli(home, ("id", "x" * 400_000), launcher=zygote)
            assert long.code == 2 and "x" * 50 in long.stderr, long
    finally:
        await zygote.close()
