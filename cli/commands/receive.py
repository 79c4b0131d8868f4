"""``wa-cli recv [--follow] [--timeout S] [--downloads DIR]``: print and acknowledge what is
queued for this device.

Without ``--follow`` it returns once the backlog is printed and nothing new came for
``--timeout`` seconds. With ``--follow`` it runs until interrupted: Ctrl-C (SIGINT)
stops it quietly with exit code 0, and once connected it survives its home node
going away: it reconnects with backoff (:data:`relay.net.backoff.CLIENT_RECONNECT`), printing one note
on stderr per outage.

Exactly once on screen (docs/cli.md): the received events are kept in the device
state before the relay gets the ack, and each is marked shown only once its line
was written, flushed and taken by the reader of stdout (:mod:`cli.commands._screen`).
What waits from an interrupted run is shown first, before connecting. Ctrl-C ends
``recv`` with exit code 130 (``recv --follow``: 0); a reader that closes stdout
(``wa-cli recv | head -n 5``) ends it quietly with exit code 0; in both cases and
after a SIGKILL, the next ``recv`` shows the rest.
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import click
import trio

from cli.client import BacklogDone, Client
from cli.commands._common import (
    AppContext,
    CliError,
    failures,
    json_option,
    state_of,
)
from cli.commands._remote_recv import Files, recv_via_daemon
from cli.commands._screen import MAX_FILES_WAITING, Screen
from cli.commands.linesink import ReaderGone, drop_stdout
from cli.daemon.remote import find_daemon
from cli.errors import ConnectionFailed, ConnectionLost, NotOpenedYet
from cli.events import Kept, Message
from cli.session.state import State
from cli.session.taskgroups import unwrap_single
from relay.net.backoff import CLIENT_RECONNECT

from . import files as file_cmd

BACKLOG_IDLE_LIMIT = 30.0  # seconds without any frame before ``synced`` -> give up


async def _until_interrupted(fn: Callable[..., Awaitable[object]], *args) -> bool:
    """``await fn(*args)``, cancelled by the first SIGINT (Ctrl-C); ``True`` if it was
    interrupted, ``False`` if it returned.

    Must run in the main thread (signal handling). Errors of ``fn`` are raised as
    themselves, not wrapped in an exception group. SIGINT never raises
    ``KeyboardInterrupt`` in between: a line is never cut from its shown mark.
    """
    interrupted = False

    async def cancel_on_signal(signals, scope: trio.CancelScope) -> None:  # noqa: ANN001
        nonlocal interrupted
        async for _ in signals:
            interrupted = True
            scope.cancel()
            return

    with unwrap_single(), trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(cancel_on_signal, signals, nursery.cancel_scope)
            await fn(*args)
            nursery.cancel_scope.cancel()
    return interrupted


async def _receive(client: Client, screen: Screen, idle_s: float | None,
                   synced: Callable[[], None] = lambda: None) -> None:
    """Show what ``client`` receives until nothing came for ``idle_s`` seconds after the
    backlog (forever if ``None``) and the files of the messages shown are downloaded.
    Shows what waits in the inbox first; calls ``synced()`` once the backlog is in."""
    with unwrap_single():
        async with trio.open_nursery() as nursery:
            await nursery.start(screen.serve_files, client)
            await screen.files.resume_pending(client, skip=screen.pending_file_ids())
            await screen.show_ready()
            receiver = client.receive(keep=True)
            backlog_done = False
            while True:
                await screen.wait_files(MAX_FILES_WAITING)
                idle = max(idle_s or 0.0, BACKLOG_IDLE_LIMIT) if not backlog_done else idle_s
                event = None
                with trio.move_on_after(idle if idle is not None else float("inf")):
                    event = await receiver.__anext__()
                if event is None:
                    if not backlog_done:
                        raise CliError("the relay did not finish delivering the queued messages")
                    await screen.wait_files(0)
                    await screen.show_ready()  # what waited behind the last file message
                    break
                if isinstance(event, Kept):
                    await screen.show_ready()
                elif isinstance(event, Message):  # ephemeral (typing): never kept
                    await screen.show_live(event)
                elif isinstance(event, BacklogDone):
                    backlog_done = True
                    synced()
            nursery.cancel_scope.cancel()


async def _once(app: AppContext, state: State, idle_s: float, screen: Screen) -> None:
    await screen.show_ready()  # what an earlier run kept, before connecting
    async with app.connect(state) as client:
        await _receive(client, screen, idle_s)


async def _follow(app: AppContext, state: State, screen: Screen) -> None:
    """Receive until cancelled. A first connection that fails raises; after that a
    lost connection, a failed reconnect or a message that cannot be opened yet
    (:class:`~cli.errors.NotOpenedYet`) is retried after the next of
    :data:`relay.net.backoff.CLIENT_RECONNECT` (restarted once a connection got through its backlog),
    with one note per outage."""
    delays: Iterator[float] | None = None  # None until connected once
    outage = False

    def synced() -> None:
        nonlocal delays, outage
        delays, outage = CLIENT_RECONNECT.delays(), False

    await screen.show_ready()
    while True:
        try:
            async with app.connect(state) as client:
                delays = delays or CLIENT_RECONNECT.delays()
                await _receive(client, screen, None, synced)
        except (ConnectionLost, ConnectionFailed, NotOpenedYet) as exc:
            if delays is None:
                raise
            if not outage:
                outage = True
                app.out.note(f"{exc}; retrying until interrupted"
                             if isinstance(exc, NotOpenedYet) else
                             f"lost the connection to the home node ({exc}); "
                             "reconnecting until interrupted")
            await trio.sleep(next(delays))


def _reader_gone(app: AppContext, state: State) -> None:
    """stdout was closed by its reader: send what Python still buffers for it to
    /dev/null (no error at exit) and say how much is left for the next run."""
    drop_stdout()
    left = len(state.inbox)
    with contextlib.suppress(BrokenPipeError):  # stderr closed too: nobody to tell
        app.out.note(f"the output was closed; {left} event{'s' * (left != 1)} kept for "
                     "the next 'wa-cli recv'" if left else "the output was closed")


@click.command()
@click.option("--follow", "-f", is_flag=True, help="Keep printing new messages until interrupted.")
@click.option("--timeout", type=click.FloatRange(min=0), default=2.0, show_default=True,
              help="Return once the queue is printed and nothing new came for this many seconds.")
@click.option("--downloads", type=click.Path(file_okay=False, path_type=Path),
              help="Where received files are saved  [default: HOME/downloads]")
@click.option("--auto-download", "auto_download", type=click.IntRange(min=0),
              default=file_cmd.AUTO_DOWNLOAD_MAX, show_default=True, envvar="WA_AUTO_DOWNLOAD",
              help="Largest file (bytes) downloaded by itself, and only from contacts; "
                   "other files are listed with the command that fetches them.")
@json_option
@click.pass_obj
def recv(app: AppContext, follow: bool, timeout: float, downloads: Path | None,
         auto_download: int) -> None:
    """Print and acknowledge the messages queued for this device.

    Each message is decrypted and kept in the local state, then acknowledged to
    the relay, then printed; it counts as shown once its line has been read
    (from a pipe: taken by the reader). Whatever an interrupted recv (Ctrl-C,
    killed, 'recv | head -n 5') did not show is shown by the next one, first.
    A message that a killed recv was printing at that very moment is shown
    again, marked "maybe shown before" ("maybe_shown": true with --json).
    File messages are printed when their download has finished; other senders'
    messages behind them do not wait, the same sender's do (order per sender).
    Only files from contacts up to --auto-download bytes are downloaded; others
    are listed with the command that fetches them.

    With --follow it keeps printing new messages until interrupted; Ctrl-C then
    stops it quietly with exit code 0. If the home node goes away it reconnects
    (after 0.5 s, doubling up to 30 s), with one note on stderr per outage; so it
    does when a message cannot be opened yet (its sender's home node, needed for a
    new contact's keys, is unreachable): that message and those behind it wait at
    the home node until it can (without --follow, recv exits 1 saying so).

    While 'wa-cli daemon' serves this --home, recv goes through it (several
    at once, beside 'send'). Without a daemon, recv --follow holds the device:
    other changing commands of the same --home (send, contacts add, ...) fail,
    naming its process id; read-only ones (id, history, contacts list, outbox)
    run beside it. Ctrl-C and SIGTERM stop --follow with exit code 0.
    """
    remote = find_daemon(app.home)
    if remote is not None:
        with remote:
            return recv_via_daemon(app, remote, follow, timeout, Files(
                file_cmd.default_downloads(app, downloads), auto_download))
    with state_of(app) as state, failures():
        files = file_cmd.FileReceiver(app, state, file_cmd.default_downloads(app, downloads),
                                      auto_download)
        screen = Screen(app, state, files)
        try:
            if follow:
                trio.run(_until_interrupted, _follow, app, state, screen)
                interrupted = False  # Ctrl-C is how --follow ends
            else:
                interrupted = trio.run(_until_interrupted, _once, app, state, timeout, screen)
        except ReaderGone:
            screen.finish()
            _reader_gone(app, state)
            return
        screen.finish()
        if follow:
            files.check()
            app.stop_now()  # saved and flushed: skip the interpreter's teardown
        if interrupted:
            click.echo("\ninterrupted", err=True)
            raise click.exceptions.Exit(130)
        if not follow and not screen.shown and not app.out.json_mode:
            app.out.note("no new messages")
    files.check()
