"""The caps of the durable outbox toward unreachable peers (issue 11).

:class:`OutboxCaps` counts the payload bytes of outbox entries per sending account
and in all, and says which new parts would go over ``sender_cap`` / ``total_cap``:
those are refused to their sender (``quota_exceeded``), never dropped after being
accepted. Pure bookkeeping, no I/O.
"""

from __future__ import annotations

from relay.errors import RelayError
from relay.protocol import ErrorCode, write_frame
from relay.protocol.frames import Forward, Frame, GroupForward


class OutboxCaps:
    """Byte counts of the outbox, per sender and in all.

    Args:
        sender_cap, total_cap: most payload bytes of one sending account's parts, and
            of all entries (``None``: no cap).
        retry_after_ms: the retry hint of a refusal.

    Attributes:
        sender_bytes: bytes per sending user id (``""`` for entries without a sender).
        total_bytes: bytes of every counted entry.
    """

    def __init__(self, sender_cap: int | None, total_cap: int | None,
                 retry_after_ms: int) -> None:
        self._sender_cap = sender_cap
        self._total_cap = total_cap
        self._retry_after_ms = retry_after_ms
        self._sizes: dict[int, tuple[str, int]] = {}  # outbox id -> (sender, bytes)
        self.sender_bytes: dict[str, int] = {}
        self.total_bytes = 0

    def over_caps(self, parts: list[Forward | GroupForward]) -> list[RelayError | None]:
        """Which of ``parts`` (to be put in this order) the caps refuse: ``None`` for
        a part that fits (counted as if the ones before it were put), else its
        ``quota_exceeded`` refusal (``quota`` ``outbox_sender`` or ``outbox_total``)."""
        senders: dict[str, int] = {}
        total = self.total_bytes
        out: list[RelayError | None] = []
        for part in parts:
            n = len(write_frame(part))
            have = senders.get(part.sender_user, self.sender_bytes.get(part.sender_user, 0))
            if self._sender_cap is not None and have + n > self._sender_cap:
                out.append(self._refusal("outbox_sender", self._sender_cap,
                                         "this sender's messages to an unreachable node"))
            elif self._total_cap is not None and total + n > self._total_cap:
                out.append(self._refusal("outbox_total", self._total_cap,
                                         "messages to unreachable nodes"))
            else:
                senders[part.sender_user] = have + n
                total += n
                out.append(None)
        return out

    def _refusal(self, quota: str, cap: int, what: str) -> RelayError:
        return RelayError(ErrorCode.QUOTA_EXCEEDED,
                          f"the node holds {cap} bytes of {what} at most; retry later",
                          quota=quota, retry_after_ms=self._retry_after_ms)

    def count(self, outbox_id: int, request: Frame, size: int) -> None:
        """Count a stored entry of ``size`` payload bytes."""
        sender = request.sender_user if isinstance(request, Forward | GroupForward) else ""
        self._sizes[outbox_id] = (sender, size)
        self.sender_bytes[sender] = self.sender_bytes.get(sender, 0) + size
        self.total_bytes += size

    def uncount(self, outbox_id: int) -> None:
        """Forget a deleted entry (unknown ids: nothing)."""
        sender, size = self._sizes.pop(outbox_id, ("", 0))
        if not size:
            return
        left = self.sender_bytes.get(sender, 0) - size
        if left > 0:
            self.sender_bytes[sender] = left
        else:
            self.sender_bytes.pop(sender, None)
        self.total_bytes -= size
