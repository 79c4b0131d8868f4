"""Rate-limited warnings about requests refused because the node's storage is full.

Every refusal with ``storage_full`` (a ``send``, ``forward``, ``group_send``,
media upload, ...) is counted; at most one WARNING line per
:data:`FULL_LOG_INTERVAL` seconds reports how many were refused since the last
line, by operation (frame type). Metadata only: never payloads or user ids.
"""

from __future__ import annotations

import logging
from collections import Counter

FULL_LOG_INTERVAL = 10.0  # seconds between two "storage full" warnings


class StorageFullLog:
    """Counts ``storage_full`` refusals and logs them, rate-limited (one node owns one).

    Args:
        log: the node's logger.
        interval: least seconds between two warning lines.
    """

    def __init__(self, log: logging.Logger, interval: float = FULL_LOG_INTERVAL) -> None:
        self._log = log
        self._interval = interval
        self._counts: Counter[str] = Counter()
        self._logged_at = float("-inf")

    def note(self, operation: str, now: float) -> None:
        """Count one refusal of ``operation`` (a frame type) at ``now`` (Trio seconds);
        log one WARNING naming the operations and counts unless one was logged
        less than ``interval`` s ago (then the count waits for the next line)."""
        self._counts[operation] += 1
        if now - self._logged_at < self._interval:
            return
        total = sum(self._counts.values())
        ops = ", ".join(f"{op} x{n}" for op, n in sorted(self._counts.items()))
        self._log.warning("storage full: refused %d request(s) since the last report (%s)",
                          total, ops)
        self._counts.clear()
        self._logged_at = now
