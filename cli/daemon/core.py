"""The daemon's device: one state, one connection kept up, received events handed to
subscribers.

:class:`Device` holds the open (exclusively locked) state of a home and keeps a
:class:`~cli.client.Client` connected to the home node for as long as it runs
(:meth:`Device.serve`): it reconnects after an outage with the backoff of ``recv
--follow`` (each connection first sends what waits in the local outbox, see
:func:`cli.client.open_client`), receives with the events kept in the state's inbox
(:mod:`cli.session.inbox`) and hands each kept event to the subscribers
(:meth:`Device.subscribe`): an event is marked shown once a subscriber took it
(written to a JSON-RPC program; printed and read, for ``wa-cli recv``, which
confirms each line), and waits in the inbox while nobody is subscribed. One task
shows (:meth:`Device.want_show` wakes it), so a subscriber that takes its time never
holds up receiving.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import trio

from cli.client import Client
from cli.errors import ClientError, ConnectionFailed, NotOpenedYet
from cli.events import BacklogDone, Kept
from cli.features import outbox
from cli.session.inbox import Pending
from cli.session.state import State

__all__ = ["Device", "Subscriber"]

log = logging.getLogger(__name__)

FOLD_EVERY = 4096  # shown marks appended before they are folded into the state file
CONNECT_WAIT = 10.0  # seconds a request waits for the daemon's connection when there is none

Subscriber = Callable[[Pending], Awaitable[bool | None]]
"""Hands one kept event to a subscriber: ``True`` taken, ``False`` not taken (gone
before it was written, or the subscriber said it did not show it), ``None`` unsure
(written, and the subscriber went away without saying whether it showed it)."""


class Device:
    """One device home served by the daemon.

    Args:
        state: the open state (exclusive lock held by the caller).
        connect: opens a client of ``state`` (the command's network settings).
        delays: seconds to wait before each reconnection attempt (endless iterator
            factory, e.g. ``relay.net.backoff.CLIENT_RECONNECT.delays``).
        connect_wait: seconds a request waits for the connection while the daemon is
            (re)connecting, before it fails with "no connection" (default
            :data:`CONNECT_WAIT`, as long as a command's own connect timeout).

    Attributes:
        client: the connected client, ``None`` while there is no connection.
        uploads: upload token -> uploaded attachment waiting for ``sendFile``
            (:mod:`cli.daemon.methods_files`, which bounds it).
        downloading: blob key -> lock held while that blob is downloaded (its
            ``.part`` file has one writer; :mod:`cli.daemon.methods_files`).
    """

    def __init__(self, state: State, connect: Callable[[State], AbstractAsyncContextManager[Client]],
                 delays: Callable[[], Iterator[float]], *,
                 connect_wait: float = CONNECT_WAIT) -> None:
        self.state = state
        self.connect_wait = connect_wait
        self._connect = connect
        self._delays = delays
        self.client: Client | None = None
        self.connected = trio.Event()  # set while connected; replaced when lost
        self._subscribers: dict[int, Subscriber] = {}
        self._next_sub = 1
        self._showing = trio.Lock()
        self._show_wanted = trio.Event()
        self._folded = 0
        self._outbox_changed = trio.Event()
        self.uploads: dict[str, Any] = {}
        self.downloading: dict[Any, trio.Lock] = {}

    # ------------------------------------------------------------ connection

    async def live(self, wait: float | None = None) -> Client:
        """The connected client, waiting up to ``wait`` seconds (default
        :attr:`connect_wait`) while the daemon reconnects: a request made just after an
        outage healed is served, not refused, as a command that connects itself would be.

        Raises:
            ConnectionFailed: still no connection after ``wait`` seconds.
        """
        with trio.move_on_after(self.connect_wait if wait is None else wait):
            while self.client is None:
                await self.connected.wait()
        if self.client is None:
            raise ConnectionFailed("no connection to the home node")
        return self.client

    @asynccontextmanager
    async def session(self) -> AsyncIterator[Client]:
        """The live client for a request that needs the home node now (``resend``,
        approvals, group changes), as :meth:`live`.

        Raises:
            ConnectionFailed: no connection after :attr:`connect_wait` seconds.
        """
        yield await self.live()

    @asynccontextmanager
    async def session_now(self) -> AsyncIterator[Client]:
        """The live client without waiting (for :func:`cli.features.posting.post_text`,
        which keeps the message in the outbox when there is no connection: the daemon
        sends it once connected again).

        Raises:
            ConnectionFailed: no connection right now.
        """
        yield await self.live(0)

    async def serve(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:  # noqa: ANN001
        """Stay connected and receive until cancelled (started at once; connecting goes on
        in the background). The reconnection backoff restarts once a connection got
        through its backlog, so a message that cannot be opened yet
        (:class:`~cli.errors.NotOpenedYet`) is retried ever more slowly, not at once."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._shower)
            task_status.started()
            await self._stay_connected()

    async def _stay_connected(self) -> None:
        delays = self._delays()
        outage: str | None = None  # "link" (no connection) or "open" (NotOpenedYet)

        def synced() -> None:  # the backlog went through: the outage is over
            nonlocal delays, outage
            delays, outage = self._delays(), None

        while True:
            try:
                async with self._connect(self.state) as client:
                    self.client = client
                    self.connected.set()
                    if outage == "link":
                        log.warning("connected to the home node again")
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(self._send_outbox, client)
                        await self._receive(client, synced)
                        nursery.cancel_scope.cancel()
            except NotOpenedYet as exc:  # the backoff keeps growing until it opens
                if outage != "open":
                    log.warning("%s; retrying until stopped", exc)
                outage = "open"
            except ClientError as exc:
                if outage != "link":
                    log.warning("no connection to the home node (%s); retrying until "
                                "stopped", exc)
                outage = "link"
            finally:
                self.client = None
                if self.connected.is_set():
                    self.connected = trio.Event()
            await trio.sleep(next(delays))

    def outbox_changed(self) -> None:
        """A message was kept in the outbox: the connected client sends it (the next
        connection does anyway)."""
        self._outbox_changed.set()

    async def _send_outbox(self, client: Client) -> None:
        while True:
            if self.state.outbox:
                await outbox.flush(client)
            await self._outbox_changed.wait()
            self._outbox_changed = trio.Event()

    async def _receive(self, client: Client, synced: Callable[[], None]) -> None:
        self.want_show()
        async for event in client.receive(keep=True):
            if isinstance(event, Kept):
                self.want_show()
            elif isinstance(event, BacklogDone):
                synced()

    # ------------------------------------------------------------ subscribers

    def subscribe(self, write: Subscriber) -> int:
        """Add a subscriber; returns its id. What waits in the inbox is written to it by
        the next :meth:`show_pending` (call it)."""
        sid, self._next_sub = self._next_sub, self._next_sub + 1
        self._subscribers[sid] = write
        return sid

    def want_show(self) -> None:
        """Wake the showing task: what waits in the inbox goes to the subscribers
        (:meth:`show_pending`)."""
        self._show_wanted.set()

    async def _shower(self) -> None:
        while True:
            await self._show_wanted.wait()
            self._show_wanted = trio.Event()
            await self.show_pending()

    def unsubscribe(self, sid: int) -> bool:
        """Remove a subscriber; ``False`` if there was none with that id."""
        return self._subscribers.pop(sid, None) is not None

    async def show_pending(self) -> None:
        """Hand every event waiting in the inbox, in order, to every subscriber; mark it
        shown once some subscriber took it; flag it ``maybe_shown`` (kept, shown again
        with the flag) if none took it and one went away unsure (:data:`Subscriber`).
        A subscriber that did not take an event is dropped. Stops (the rest waits)
        with no subscriber."""
        async with self._showing:
            inbox = self.state.inbox
            for p in inbox.pending():
                if not self._subscribers:
                    break
                if p.n not in inbox:
                    continue
                inbox.showing(p.n)
                outcomes = []
                for sid, write in list(self._subscribers.items()):
                    outcomes.append(taken := await write(p))
                    if taken is not True:
                        self._subscribers.pop(sid, None)
                if True in outcomes:
                    inbox.shown(p.n)
                elif None in outcomes:
                    inbox.unsure(p.n)
                    await self.state.asave()  # the flag outlives a daemon killed next
                else:
                    inbox.withdraw(p.n)
            if inbox.marks - self._folded >= FOLD_EVERY:
                marks = inbox.marks
                await self.state.asave()
                if inbox.marks == marks and inbox.announced is None:
                    inbox.reset_marks()
                self._folded = marks
