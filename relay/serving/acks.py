"""Cumulative acknowledgements of one device connection, coalesced into ``ack_many``.

A device's ``ack {seq}`` means "everything up to ``seq`` is processed". The
connection clamps ``seq`` to the highest seq it delivered (so an ack never
deletes an envelope the device was not sent) and posts it here. One task per
syncing connection (:meth:`AckFlusher.run`) deletes up to the highest posted
seq with one durable ``storage.ack_many`` call at a time, joining the storage's
group commit with everything else being written; acks that arrive during that
commit are coalesced into the next call. Acks free space, so they succeed on a
full store; a failing store (``storage_unavailable``) keeps them pending for
the next try.
"""

from __future__ import annotations

import logging

import trio

from storage import Storage, StorageError

RETRY_DELAY = 1.0  # seconds before acks that failed to apply are tried again


class AckFlusher:
    """Pending cumulative acks of one device.

    Args:
        storage: where the queue lives.
        user_id, device_id: the device.
        log: for metadata-only warnings.
    """

    def __init__(self, storage: Storage, user_id: str, device_id: int,
                 log: logging.Logger) -> None:
        self._storage = storage
        self._dev = (user_id, device_id)
        self._log = log
        self._posted = 0
        self._applied = 0
        self._wake = trio.Event()
        self._progress = trio.Event()
        #: Counters for tests and metrics: ``ack_many`` calls made.
        self.calls = 0

    @property
    def applied(self) -> int:
        """The highest seq durably deleted up to."""
        return self._applied

    def post(self, seq: int) -> None:
        """Delete the device's envelopes up to ``seq`` soon (never blocks)."""
        if seq > self._posted:
            self._posted = seq
            self._wake.set()

    async def flushed(self) -> None:
        """Return once every ack posted so far is durably applied."""
        while self._applied < self._posted:
            await self._progress.wait()

    async def run(self) -> None:
        """Apply posted acks until cancelled.

        Raises:
            Exception: a bug in the storage backend (not a ``StorageError``); the
                connection's boundary logs it and closes with 1011.
        """
        while True:
            if self._applied >= self._posted:
                self._wake = trio.Event()
                await self._wake.wait()
                continue
            seq = self._posted
            try:
                await self._storage.ack_many([(*self._dev, seq)])
            except StorageError as exc:
                self._log.warning("ack of %s/%d up to %d not applied yet (%s); retrying",
                                  self._dev[0][:8], self._dev[1], seq, type(exc).__name__)
                await trio.sleep(RETRY_DELAY)
                continue
            self.calls += 1
            self._applied = seq
            self._progress.set()
            self._progress = trio.Event()
