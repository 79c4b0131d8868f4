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

A storage that takes a submission without a waiting task
(:meth:`storage.lmdb.LmdbStorage.ack_many_nowait`) gets the ``ack_many`` right from
:meth:`AckFlusher.post` (the reader's step that read the ack) while none is in flight,
and the next one from the commit's hand-back of the previous: the flusher's task takes
no step for them (it is woken only to retry after a refusal, when the storage's queue
is full, or to raise a bug at the connection's boundary). One ``ack_many`` is in
flight at a time either way.
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
        self._nowait = getattr(storage, "ack_many_nowait", None)
        self._in_flight = False  # an ack_many is submitted and not answered yet
        self._failed: Exception | None = None  # a submission without a task failed
        #: Counters for tests and metrics: ``ack_many`` calls made (``nowait``: of them,
        #: submitted without the flusher's task).
        self.calls = 0
        self.nowait = 0

    @property
    def applied(self) -> int:
        """The highest seq durably deleted up to."""
        return self._applied

    def post(self, seq: int) -> None:
        """Delete the device's envelopes up to ``seq`` soon (never blocks): submitted now
        if the storage takes it without a task and none is in flight, else by
        :meth:`run`."""
        if seq > self._posted:
            self._posted = seq
            if self._in_flight or self._failed is not None:
                return  # the hand-back of the one in flight, or the task, goes on from here
            if not self._submit_nowait():
                self._wake.set()

    def _submit_nowait(self) -> bool:
        """Submit ``ack_many`` up to the highest posted seq without a task; ``False``:
        not done (one in flight, a failure pending, or the storage cannot)."""
        if self._in_flight or self._failed is not None or self._nowait is None:
            return False
        seq = self._posted
        if not self._nowait([(*self._dev, seq)], lambda result: self._answered(seq, result)):
            return False
        self._in_flight = True
        self.nowait += 1
        return True

    def _answered(self, seq: int, result: list[int] | Exception) -> None:
        """The hand-back of a submission without a task (on the event loop)."""
        self._in_flight = False
        if isinstance(result, Exception):
            self._failed = result  # run() retries or raises it
            self._wake.set()
            return
        self._done(seq)
        if self._posted > self._applied:
            try:
                submitted = self._submit_nowait()
            except Exception as exc:  # noqa: BLE001 - a bug: raised by run() at the connection's boundary
                self._failed, submitted = exc, False  # (raised here it would end the event loop)
            if not submitted:
                self._wake.set()

    def _done(self, seq: int) -> None:
        self.calls += 1
        self._applied = max(self._applied, seq)
        self._progress.set()
        self._progress = trio.Event()

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
            failed = self._failed
            if failed is not None:  # kept while waiting: post() submits nothing meanwhile
                if not isinstance(failed, StorageError):
                    raise failed  # a bug (or the storage closed): the connection's boundary
                self._log.warning("ack of %s/%d up to %d not applied yet (%s); retrying",
                                  self._dev[0][:8], self._dev[1], self._posted,
                                  type(failed).__name__)
                await trio.sleep(RETRY_DELAY)
                self._failed = None
                continue
            if self._in_flight or self._applied >= self._posted:
                self._wake = trio.Event()
                await self._wake.wait()
                continue
            seq = self._posted
            self._in_flight = True
            try:
                await self._storage.ack_many([(*self._dev, seq)])
            except StorageError as exc:
                self._failed = exc  # retried above, after RETRY_DELAY
                continue
            finally:
                self._in_flight = False
            self._done(seq)
