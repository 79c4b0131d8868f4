"""``wa-cli recv``'s screen: the device's inbox shown exactly once, in order.

The receiver keeps every event to show in the inbox of the device state
(:mod:`cli.inbox`, durable before the ack). :class:`Screen` shows them oldest
first: each is announced, written, flushed and taken by the reader of the stream
(:mod:`cli.linesink`), then marked shown. A file message is handed to a download
task (:meth:`Screen.serve_files`) and shown once its download has finished or
failed, after everything kept before it; other senders' messages behind it do not
wait for the download, its own sender's do (order per sender holds on screen).

Notes on stderr (human device-list and group changes, bounces) count as shown
once written: stderr is for diagnostics, which a parent may read only at its end.

With ``--json`` a line of an event that an earlier run may have shown (it was
killed while showing it) carries ``"maybe_shown": true``; human output starts it
with :data:`MAYBE_PREFIX`.
"""

from __future__ import annotations

import sys

import trio

from cli.commands._common import AppContext
from cli.commands._events import render
from cli.commands.linesink import LineSink, ReaderGone
from cli.events import Message
from cli.output import json_line, scrub
from cli.session.inbox import Pending
from cli.session.state import State

from . import files as file_cmd

__all__ = ["FOLD_EVERY", "GRACE", "MAX_FILES_WAITING", "MAYBE_PREFIX", "Screen"]

MAX_FILES_WAITING = 16  # file messages kept while downloads run; no new batch is taken beyond
GRACE = 0.5  # seconds: on Ctrl-C, how long the reader may still take the line in flight
FOLD_EVERY = 4096  # marks appended before they are folded into the state file
MAYBE_PREFIX = "(maybe shown before) "


def _is_file(p: Pending) -> bool:
    return isinstance(p.event, Message) and p.event.type == "file"


def _sender(p: Pending) -> tuple[str, int] | None:
    """The sending device of a message event (``None`` for other events)."""
    if isinstance(p.event, Message):
        return (p.event.sender_user, p.event.sender_device)
    return None


class Screen:
    """Shows the inbox of ``state`` on stdout (and notes on stderr).

    Args:
        app: the command context (output mode).
        state: the open device state.
        files: downloads the files of file messages.
    """

    def __init__(self, app: AppContext, state: State, files: file_cmd.FileReceiver) -> None:
        self._app = app
        self._state = state
        self.files = files
        self._showing = trio.Lock()
        self._out = LineSink(sys.stdout)
        self._err = LineSink(sys.stderr, watch=False)  # notes: a parent may read them late
        self.shown = 0  # lines shown for kept events (messages, requests, notes, ...)
        self._changed: trio.Event | None = None
        self._folded = 0  # inbox marks already folded

    # ------------------------------------------------------------ queries

    def pending_file_ids(self) -> frozenset[str]:
        """Message ids (hex) of the file messages waiting in the inbox."""
        return frozenset(p.event.msg_id.hex() for p in self._state.inbox.pending()
                         if _is_file(p))

    def _files_waiting(self) -> int:
        return sum(_is_file(p) for p in self._state.inbox.pending())

    # ------------------------------------------------------------ showing

    def _notify(self) -> None:
        if self._changed is not None:
            self._changed.set()
            self._changed = None

    async def _wait_change(self) -> None:
        if self._changed is None:
            self._changed = trio.Event()
        await self._changed.wait()

    def _line(self, p: Pending, shape: tuple[dict | None, str, bool]) -> tuple[LineSink, str]:
        obj, human, note = shape
        json_mode = self._app.out.json_mode
        if json_mode and obj is not None:
            return self._out, json_line({**obj, "maybe_shown": True} if p.maybe_shown else obj)
        text = scrub((MAYBE_PREFIX if p.maybe_shown else "") + human)
        return (self._err if note or json_mode else self._out), text

    async def show_live(self, event: Message) -> None:
        """Show an event that is never kept (an ephemeral one: typing) right away; it is
        not in the inbox, so it is shown at most once and may be lost with the process.

        Raises:
            ReaderGone: the reader closed the stream. OSError: a write failed.
        """
        shape = render(self._state, event)
        if shape is None:
            return
        sink, line = self._line(Pending(-1, event), shape)
        async with self._showing:
            sink.write(line)
            await sink.taken()

    async def _show(self, p: Pending, shape: tuple[dict | None, str, bool]) -> None:
        """Announce, write, wait until taken, mark shown (see :mod:`cli.inbox`).

        Raises:
            ReaderGone: the reader closed the stream first (``p`` stays pending).
            OSError: a write failed.
        """
        sink, line = self._line(p, shape)
        inbox = self._state.inbox
        inbox.showing(p.n)
        try:
            sink.write(line)
            await sink.taken()
        except trio.Cancelled:  # Ctrl-C: the reader may still take the line in flight
            with trio.CancelScope(deadline=trio.current_time() + GRACE, shield=True):
                try:
                    await sink.taken()
                except ReaderGone:
                    inbox.withdraw(p.n)
                else:
                    inbox.shown(p.n)
            raise  # if the grace ran out, it stays announced: flagged maybe_shown next time
        except (ReaderGone, OSError):
            inbox.withdraw(p.n)
            raise
        inbox.shown(p.n)
        self.shown += 1
        self._notify()

    async def show_ready(self) -> None:
        """Show every pending event in order, except file messages (:meth:`serve_files`
        shows those once downloaded) and what the same sending device sent after a
        file message that is still waiting: order per (sending device, this device)
        holds on screen, while other senders' messages do not wait for a download.
        Wakes the download task for new file messages."""
        self._notify()
        async with self._showing:  # the receive loop and serve_files both call this
            await self._show_unheld()
        if self._state.inbox.marks - self._folded >= FOLD_EVERY:
            await self._fold()

    async def _show_unheld(self) -> None:
        """The body of :meth:`show_ready`; the caller holds ``self._showing``."""
        held: set[tuple[str, int]] = set()  # senders with a file message still waiting
        for p in self._state.inbox.pending():
            sender = _sender(p)
            if _is_file(p):
                held.add(sender)  # type: ignore[arg-type]
                continue
            if sender in held or p.n not in self._state.inbox:
                continue
            shape = render(self._state, p.event)
            if shape is not None:
                await self._show(p, shape)

    async def serve_files(self, client, *, task_status=trio.TASK_STATUS_IGNORED) -> None:  # noqa: ANN001
        """Download and show the inbox's file messages, oldest first, until cancelled.

        A downloaded file message is shown under the same lock as :meth:`show_ready`,
        after everything older than it in the inbox (it is the oldest file message,
        so nothing older is held back): a line of its sender that was kept before it
        and is still being shown can never come after it (finding 18,
        docs/reliability.md).

        Raises:
            ConnectionLost: the connection dropped (the file message stays pending).
            ReaderGone, OSError: as :meth:`_show`.
        """
        task_status.started()
        while True:
            p = next((p for p in self._state.inbox.pending() if _is_file(p)), None)
            if p is None:
                await self._wait_change()
                continue
            info = await self.files.fetch(client, p.event)  # type: ignore[arg-type]
            obj, human = self.files.row(p.event, info)  # type: ignore[arg-type]
            async with self._showing:
                await self._show_unheld()  # what came before it, first
                await self._show(p, (obj, human, False))
            await self.show_ready()  # what its sender sent after it was held back

    async def wait_files(self, limit: int) -> None:
        """Wait until at most ``limit`` file messages wait for their download
        (:meth:`serve_files` must be running).

        Wakes :meth:`serve_files` first: a file message may have been kept without a
        :meth:`show_ready` after it (the receiver's batch was processed and kept, but
        the wait for its ``Kept`` marker was cancelled, e.g. by ``recv --timeout``
        while the batch's delivery receipts were being sent); without the wake both
        would wait for each other for good (finding 16, docs/reliability.md)."""
        while self._files_waiting() > limit:
            self._notify()
            await self._wait_change()

    # ------------------------------------------------------------ folding

    async def _fold(self) -> None:
        """Save the state, then empty ``shown.bin`` if no mark came meanwhile."""
        inbox = self._state.inbox
        marks = inbox.marks
        await self._state.asave()
        if inbox.marks == marks and inbox.announced is None:
            inbox.reset_marks()
        self._folded = marks

    def finish(self) -> None:
        """After the run (no client running): an event announced and not marked shown is
        flagged ``maybe_shown``; the state is saved and ``shown.bin`` emptied.

        Raises:
            OSError: the save failed (the marks stay and are applied on the next load).
        """
        self._state.inbox.settle()
        self._state.save()
        self._state.inbox.reset_marks()
