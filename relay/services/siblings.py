"""The other processes of this node: acting at once on what they commit.

A home may be served by several relay processes over one shared storage
(``postgresql://`` with ``notify=true``; docs/operations.md, "One home, several
processes"). Each process keeps a little state in memory that another process's
commits make stale; the storage tells it what changed
(``storage.serve_watch(callback)``, LISTEN/NOTIFY on PostgreSQL), and
:class:`Siblings` acts on it:

* **queues**: envelopes were enqueued for a device connected *here* (a sender
  on another process, a forward that reached another process): wake its pusher,
  so it is delivered at once;
* **lists**: a user's device list was stored elsewhere: drop the cached copy
  (:meth:`Directory.forget`), and close the connections here of devices the new
  list no longer holds (``error unknown_device``, as the publishing process does
  for its own);
* **outbox**: entries were put for a destination: this process's forwards to it
  queue behind them, and its drain sends them too (so entries of a process that
  died are not stranded);
* **ephemeral**: copies of an ephemeral send (typing) that another process could
  not push to a device of its own: pushed here if the device is connected here
  (:func:`relay.services.ephemeral.push_copy`);
* ``None`` (the listening connection was lost and is back; something may have
  been missed), or a change that says ``everything`` (another process could not
  announce a commit): all of the above, for everything.

Storage backends without the method (LMDB, memory) are one process each; then
nothing here runs.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import Protocol

import trio

from relay.errors import KNOWN_REFUSALS
from relay.protocol.frames import Envelope
from relay.services.delivery import DeviceRegistry
from relay.services.directory import Directory
from relay.services.ephemeral import push_copy
from relay.services.outbox import Outbox

RETRY_DELAY = 1.0  # seconds before a device-list check that failed is tried again


class Changes(Protocol):
    """What another process committed (``storage.postgresql.Changes``)."""

    queues: set[tuple[str, int]]
    lists: set[str]
    outbox: set[str]
    everything: bool


WatchFn = Callable[..., Awaitable[None]]
"""``serve_watch(on_change, *, task_status)`` of a shared storage."""


def watch_of(storage: object) -> WatchFn | None:
    """The storage's ``serve_watch`` if it is shared with other processes (it offers
    the method and was opened to notify them), else ``None``."""
    watch = getattr(storage, "serve_watch", None)
    return watch if watch is not None and getattr(storage, "notifies", False) else None


class Siblings:
    """Applies other processes' changes to this process's state.

    Args:
        registry: connected devices (pushers to wake, sessions to revoke).
        directory: the device-list cache.
        outbox: the per-destination drains.
        log: for metadata-only log lines.
    """

    def __init__(self, registry: DeviceRegistry, directory: Directory, outbox: Outbox,
                 log: logging.Logger) -> None:
        self._registry = registry
        self._directory = directory
        self._outbox = outbox
        self._log = log
        self._recheck: set[str] = set()  # users whose connected devices to check
        self._more = trio.Event()
        self.changes_seen = 0  # notifications acted on (tests, metrics)

    def on_change(self, changes: Changes | None) -> None:
        """The storage's callback (on the event loop; never blocks)."""
        self.changes_seen += 1
        if changes is None or changes.everything:
            self._directory.forget_all()
            self._outbox.note_pending(None)
            self._registry.notify_all()
            self._check({u for u, _ in self._registry.devices()})
            return
        for user_id, device_id in changes.queues:
            self._registry.notify(user_id, device_id)
        for c in getattr(changes, "ephemeral", ()):
            push_copy(self._registry, c.user_id, c.device_id,
                      Envelope(msg_id=c.msg_id, sender_user=c.sender_user,
                               sender_device=c.sender_device, ts=c.ts, kind="olm", body=c.body))
        for dest in changes.outbox:
            self._outbox.note_pending(dest)
        if changes.lists:
            for user_id in changes.lists:
                self._directory.forget(user_id)
            here = {u for u, _ in self._registry.devices()}
            self._check(changes.lists & here)

    def _check(self, users: Iterable[str]) -> None:
        before = len(self._recheck)
        self._recheck.update(users)
        if len(self._recheck) > before:
            self._more.set()

    async def run(self, watch: WatchFn, *,
                  task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Listen (``watch``, a shared storage's ``serve_watch``) and act until
        cancelled; ``task_status.started()`` once listening.

        Raises:
            StorageUnavailable: the first LISTEN failed (later losses reconnect).
        """
        async with trio.open_nursery() as nursery:
            await nursery.start(watch, self.on_change)
            nursery.start_soon(self._revoke_removed)
            task_status.started()

    async def _revoke_removed(self) -> None:
        """Close the connections of devices that another process removed."""
        while True:
            await self._more.wait()
            self._more = trio.Event()
            users, self._recheck = self._recheck, set()
            for user_id in users:
                try:
                    entry = await self._directory.get_device_list(user_id)
                except KNOWN_REFUSALS as exc:
                    self._log.warning("device list of %s unreadable (%s); checking again",
                                      user_id[:8], type(exc).__name__)
                    self._check([user_id])
                    await trio.sleep(RETRY_DELAY)
                    continue
                current = entry[1].device_ids if entry is not None else frozenset()
                for uid, device_id in self._registry.devices():
                    if uid != user_id or device_id in current:
                        continue
                    session = self._registry.session(uid, device_id)
                    if session is not None:
                        self._log.info("device %s/%d removed by another process: closing",
                                       uid[:8], device_id)
                        session.revoke()
