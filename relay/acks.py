"""Cumulative acknowledgements, coalesced across connections into one ``ack_many``.

A device's ``ack {seq}`` means "everything up to ``seq`` is processed". The
connection clamps ``seq`` to the highest seq it delivered (so an ack never
deletes an envelope the device was not sent) and hands it to the node's
:class:`AckBatcher`, which keeps the highest pending seq per device and deletes
them all in one durable ``storage.ack_many`` call per round, joining the group
commit of whatever else is being written. Acks free space, so they succeed on a
full store; a failing store (``storage_unavailable``) keeps them pending for the
next round.
"""

from __future__ import annotations

import logging

import trio

from storage import Storage, StorageError

RETRY_DELAY = 1.0  # seconds before acks that failed to apply are tried again


class AckBatcher:
    """The node's pending acks. Run :meth:`run` in the node's nursery.

    Args:
        storage: where the queues live.
        log: for metadata-only warnings.
    """

    def __init__(self, storage: Storage, log: logging.Logger) -> None:
        self._storage = storage
        self._log = log
        self._pending: dict[tuple[str, int], int] = {}
        self._wake = trio.Event()
        self._idle = trio.Event()
        self._idle.set()
        #: Counters for tests and metrics: ``ack_many`` calls and acks applied.
        self.rounds = 0
        self.applied = 0

    def post(self, user_id: str, device_id: int, seq: int) -> None:
        """Delete the device's envelopes up to ``seq`` soon (never blocks)."""
        key = (user_id, device_id)
        if seq > self._pending.get(key, 0):
            self._pending[key] = seq
            self._idle = trio.Event() if self._idle.is_set() else self._idle
            self._wake.set()

    async def flushed(self) -> None:
        """Return once every ack posted so far is durably applied."""
        await self._idle.wait()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Apply posted acks until cancelled."""
        task_status.started()
        while True:
            if not self._pending:
                self._idle.set()
                await self._wake.wait()
                self._wake = trio.Event()
                continue
            batch, self._pending = self._pending, {}
            try:
                await self._storage.ack_many([(u, d, s) for (u, d), s in batch.items()])
            except StorageError as exc:
                self._log.warning("%d acks not applied yet (%s); retrying", len(batch),
                                  type(exc).__name__)
                for key, seq in batch.items():
                    if seq > self._pending.get(key, 0):
                        self._pending[key] = seq
                await trio.sleep(RETRY_DELAY)
                continue
            self.rounds += 1
            self.applied += len(batch)
