"""The storage conformance suite: a pytest mixin every backend's tests subclass.

Usage (one hook; pytest-trio with ``trio_mode = true``)::

    from storage.testing import StorageConformance
    from mybackend import MyStorage

    class TestMyStorage(StorageConformance):
        reopen_supported = True          # persistent: enables the durability tests

        def make_storage(self):          # -> AbstractAsyncContextManager[Storage]
            return MyStorage.from_url(f"my://{self.tmp_path}/db")

``self.tmp_path`` is a fresh directory per test. With ``reopen_supported``,
calling :meth:`make_storage` again in the same test must reopen the same data.
Optionally override ``make_small_storage()`` (a store of at most a few hundred
KiB) to run the :class:`~storage.errors.StorageFull` tests. Every test runs under
``trio.fail_after(test_timeout)``.

The suite covers the whole contract of :class:`storage.base.Storage`: device
list versions (``StaleVersion``), one-time keys (``DuplicateKey``, claims at most
once under 200 concurrent claims, fallback keys), queues (seqs per device,
contiguous under 500 concurrent enqueues, never reused after ack, purge or
reopen; dedupe; ``max_queue`` and ``QueueFull`` with nothing stored; atomic
multi-device enqueue; expiry), the batch methods (``enqueue_many`` answers each
request alone and in list order, also across the capacity limit, and skips a refused
sender's later requests to the same devices; cumulative
``ack_many``; ``claim_keys`` hands a device listed twice two keys; outbox
batches; a hypothesis state machine of cumulative acks racing new enqueues),
device-list watchers (idempotent, sorted, durable; refresh times, both bounds, expiry,
times across a handoff), exact queue byte counts
(per device, user, charge tag and share; across enqueue, ack, purge, expiry and
reopen) with the byte quotas of ``QueueQuota``, correspondents, single-use invites,
the outbox, media blobs (ordered chunked appends, hash check, conflicts, quota,
expiry), and durability across reopen.
"""

from ._ack_race import AckRaceConformance, AckRaceMachine
from ._base import ALICE, BOB, uid
from ._batches import BatchConformance
from ._directory import DirectoryConformance
from ._durability import DurabilityConformance, OutboxConformance
from ._handoff import HandoffConformance
from ._queues import QueueConformance
from ._quotas import QuotaConformance
from ._watchers import WatcherConformance
from .media import MediaConformance

__all__ = ["ALICE", "BOB", "AckRaceMachine", "StorageConformance", "uid"]


class StorageConformance(
    DirectoryConformance, QueueConformance, BatchConformance, AckRaceConformance, WatcherConformance, OutboxConformance,
    DurabilityConformance, MediaConformance, HandoffConformance, QuotaConformance,
):
    """Subclass in a ``Test*`` class and implement ``make_storage()``; see the module docs."""
