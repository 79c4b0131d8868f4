"""``wa-cli recv [--follow] [--timeout S] [--downloads DIR]``: print and acknowledge what is
queued for this device.

Without ``--follow`` it returns once the backlog is printed and nothing new came for
``--timeout`` seconds. With ``--follow`` it runs until interrupted: Ctrl-C (SIGINT)
stops it quietly with exit code 0, and once connected it survives its home node
going away: it reconnects with backoff (:func:`reconnect_delays`), printing one note
on stderr per outage.
"""

from __future__ import annotations

import random
import signal
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import TypeVar

import click
import trio

from ..client import BacklogDone, Client, Message
from ..errors import ConnectionFailed, ConnectionLost
from ..state import State
from ..taskgroups import unwrap_single
from . import files as file_cmd
from ._common import (
    AppContext,
    CliError,
    failures,
    json_option,
    state_of,
)
from ._events import show

BACKLOG_IDLE_LIMIT = 30.0  # seconds without any frame before ``synced`` -> give up
RECONNECT_FIRST = 0.5  # seconds before the first reconnection attempt of an outage
RECONNECT_MAX = 30.0  # seconds; the longest wait between attempts

T = TypeVar("T")


def reconnect_delays(first: float = RECONNECT_FIRST, limit: float = RECONNECT_MAX,
                     rng: Callable[[], float] = random.random) -> Iterator[float]:
    """Seconds to wait before each reconnection attempt: ``first`` doubling up to
    ``limit``, each scaled by a random 50-100 % (jitter, so that many clients do not
    come back at the same instant). Endless."""
    delay = first
    while True:
        yield delay * (0.5 + rng() / 2)
        delay = min(delay * 2, limit)


async def _until_interrupted(fn: Callable[..., Awaitable[T]], *args) -> T | None:
    """``await fn(*args)``, cancelled by the first SIGINT (Ctrl-C): then ``None``.

    Must run in the main thread (signal handling). Errors of ``fn`` are raised as
    themselves, not wrapped in an exception group.
    """
    result = None

    async def cancel_on_signal(signals, scope: trio.CancelScope) -> None:  # noqa: ANN001
        async for _ in signals:
            scope.cancel()
            return

    with unwrap_single(), trio.open_signal_receiver(signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(cancel_on_signal, signals, nursery.cancel_scope)
            result = await fn(*args)
            nursery.cancel_scope.cancel()
    return result


async def _receive(app: AppContext, client: Client, files: file_cmd.FileReceiver,
                   idle_s: float | None, synced: Callable[[], None] = lambda: None) -> int:
    """Print events from ``client`` until nothing came for ``idle_s`` seconds after the
    backlog (forever if ``None``); returns how many messages were shown. Calls
    ``synced()`` once the backlog is printed."""
    state = client.state
    shown = 0
    await files.resume_pending(client)
    receiver = client.receive()
    backlog_done = False
    while True:
        idle = max(idle_s or 0.0, BACKLOG_IDLE_LIMIT) if not backlog_done else idle_s
        event = None
        with trio.move_on_after(idle if idle is not None else float("inf")):
            event = await receiver.__anext__()
        if event is None:
            if not backlog_done:
                raise CliError("the relay did not finish delivering the queued messages")
            return shown
        if isinstance(event, BacklogDone):
            backlog_done = True
            synced()
            continue
        shown += isinstance(event, Message)
        if isinstance(event, Message) and event.type == "file":
            await files.show(client, event)
        else:
            show(app, state, event)


async def _once(app: AppContext, state: State, idle_s: float,
                files: file_cmd.FileReceiver) -> int:
    async with app.connect(state) as client:
        return await _receive(app, client, files, idle_s)


async def _follow(app: AppContext, state: State, files: file_cmd.FileReceiver) -> None:
    """Receive until cancelled. A first connection that fails raises; after that a
    lost connection or failed reconnect is retried after the next of
    :func:`reconnect_delays` (restarted once a connection got through its backlog),
    with one note per outage."""
    delays: Iterator[float] | None = None  # None until connected once
    outage = False

    def synced() -> None:
        nonlocal delays, outage
        delays, outage = reconnect_delays(), False

    while True:
        try:
            async with app.connect(state) as client:
                delays = delays or reconnect_delays()
                await _receive(app, client, files, None, synced)
        except (ConnectionLost, ConnectionFailed) as exc:
            if delays is None:
                raise
            if not outage:
                outage = True
                app.out.note(f"lost the connection to the home node ({exc}); "
                             "reconnecting until interrupted")
            await trio.sleep(next(delays))


@click.command()
@click.option("--follow", "-f", is_flag=True, help="Keep printing new messages until interrupted.")
@click.option("--timeout", type=click.FloatRange(min=0), default=2.0, show_default=True,
              help="Return once the queue is printed and nothing new came for this many seconds.")
@click.option("--downloads", type=click.Path(file_okay=False, path_type=Path),
              help="Where received files are saved  [default: HOME/downloads]")
@json_option
@click.pass_obj
def recv(app: AppContext, follow: bool, timeout: float, downloads: Path | None) -> None:
    """Print and acknowledge the messages queued for this device.

    Each message is decrypted, saved locally, then acknowledged to the relay,
    and shown once even if the relay delivers it again.

    With --follow it keeps printing new messages until interrupted; Ctrl-C then
    stops it quietly with exit code 0. If the home node goes away it reconnects
    (after 0.5 s, doubling up to 30 s), with one note on stderr per outage.

    A device is used by one wa-cli process at a time: while 'recv --follow'
    runs, other commands on the same --home (send, contacts, ...) wait 5 s and
    fail. Stop it first (Ctrl-C), or send from another device of the account.
    """
    with state_of(app) as state, failures():
        files = file_cmd.FileReceiver(app, state, file_cmd.default_downloads(app, downloads))
        if follow:
            trio.run(_until_interrupted, _follow, app, state, files)
        elif not trio.run(_once, app, state, timeout, files) and not app.out.json_mode:
            app.out.note("no new messages")
    files.check()
