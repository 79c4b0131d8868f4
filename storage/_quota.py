"""The byte-quota check of :meth:`storage.base.Storage.enqueue_many`, shared by backends.

A backend knows how many envelope bytes are queued per device, per user, per charge
tag and per (device, tag); :func:`check_quota` takes those counts through a
:class:`Usage` and raises :class:`~storage.errors.QueueFull` naming the first bound
a request would cross. Pure Python, no I/O.
"""

from __future__ import annotations

import functools
import re
from typing import Protocol

from .base import QueueQuota
from .errors import QueueFull


class Usage(Protocol):
    """The counts a backend reads (within the transaction that will write)."""

    def device(self, user_id: str, device_id: int) -> int:
        """Envelope bytes queued for one device."""

    def account(self, user_id: str) -> int:
        """Envelope bytes queued for all devices of one user."""

    def charge(self, tag: str) -> int:
        """Envelope bytes queued anywhere under charge ``tag``."""

    def share(self, user_id: str, device_id: int, tag: str) -> int:
        """Envelope bytes queued for one device under charge ``tag``."""


MAX_TAG_BYTES = 255
_CONTROL = re.compile("[\x00-\x1f]")


def check_charges(charges: tuple[str, ...]) -> tuple[str, ...]:
    """Return ``charges`` as a tuple of tags (each a 1..255-byte ``str`` without
    control characters: backends join them with NUL or U+001F).

    Raises:
        TypeError, ValueError: a malformed tag.
    """
    out = tuple(charges)
    return _checked_charges(out) if out else out


@functools.lru_cache(maxsize=4096)
def _checked_charges(out: tuple[str, ...]) -> tuple[str, ...]:
    """:func:`check_charges` of a non-empty tuple; memoized (a node uses the same few
    tag tuples for every message of a sender; an unhashable tag raises TypeError)."""
    for tag in out:
        if not isinstance(tag, str):
            raise TypeError(f"a charge tag must be str, not {type(tag).__name__}")
        # at most 4 UTF-8 bytes a character: short tags need no encoding to be measured
        if not tag or (len(tag) > MAX_TAG_BYTES // 4
                       and len(tag.encode("utf-8")) > MAX_TAG_BYTES):
            raise ValueError(f"malformed charge tag {tag!r}")
    if _CONTROL.search("".join(out)):
        raise ValueError(f"malformed charge tag in {out!r}: a control character")
    if len(out) > 1 and len(set(out)) != len(out):
        raise ValueError("a charge tag is repeated")
    return out


def check_quota(
    items: list[tuple[str, int, int]], charges: tuple[str, ...], quota: QueueQuota | None,
    usage: Usage,
) -> None:
    """Raise if adding ``items`` ``(user_id, device_id, envelope_len)`` crosses a bound.

    Raises:
        QueueFull: with ``quota`` naming the bound (``device_bytes``, ``account_bytes``,
            ``charge_bytes``, ``share_bytes``) and ``tag`` for the charge bounds.
    """
    if quota is None:
        return
    if len(items) == 1:  # one copy (a 1:1 message to one device): the same checks, unrolled
        _check_one(items[0], charges, quota, usage)
        return
    per_dev: dict[tuple[str, int], int] = {}
    per_user: dict[str, int] = {}
    for user_id, device_id, n in items:
        per_dev[(user_id, device_id)] = per_dev.get((user_id, device_id), 0) + n
        per_user[user_id] = per_user.get(user_id, 0) + n
    held = {dev: usage.device(*dev) for dev in per_dev}
    if quota.device_bytes is not None:
        for (user_id, device_id), n in per_dev.items():
            if held[(user_id, device_id)] + n > quota.device_bytes:
                raise QueueFull(f"the queue of device {device_id} would exceed "
                                f"{quota.device_bytes} bytes", quota="device_bytes")
    if quota.account_bytes is not None:
        for user_id, n in per_user.items():
            if usage.account(user_id) + n > quota.account_bytes:
                raise QueueFull(f"the queues of a recipient would exceed {quota.account_bytes} "
                                "bytes", quota="account_bytes")
    totals, shares = quota.charge_bytes, quota.share_bytes
    if totals is None and shares is None:
        return
    total = sum(per_user.values())
    exempt = quota.share_exempt
    for i, tag in enumerate(charges):
        bound = totals if totals is None or isinstance(totals, int) else _bound(totals, i)
        if bound is not None and usage.charge(tag) + total > bound:
            raise QueueFull(f"{tag} would hold more than {bound} bytes "
                            "in this node's queues", quota="charge_bytes", tag=tag)
        bound = shares if shares is None or isinstance(shares, int) else _bound(shares, i)
        if bound is None:
            continue
        for (user_id, device_id), n in per_dev.items():
            if user_id in exempt or held[(user_id, device_id)] + n <= bound:
                continue  # a tag's share of a queue is at most all the queue holds
            if usage.share(user_id, device_id, tag) + n > bound:
                raise QueueFull(f"{tag} would hold more than {bound} bytes of "
                                f"the queue of device {device_id}", quota="share_bytes",
                                tag=tag)


def _check_one(item: tuple[str, int, int], charges: tuple[str, ...], quota: QueueQuota,
               usage: Usage) -> None:
    """:func:`check_quota` of a single item, in the same order (the hot path of 1:1
    messages: no grouping)."""
    user_id, device_id, n = item
    held = usage.device(user_id, device_id) + n
    if quota.device_bytes is not None and held > quota.device_bytes:
        raise QueueFull(f"the queue of device {device_id} would exceed "
                        f"{quota.device_bytes} bytes", quota="device_bytes")
    if quota.account_bytes is not None and usage.account(user_id) + n > quota.account_bytes:
        raise QueueFull(f"the queues of a recipient would exceed {quota.account_bytes} "
                        "bytes", quota="account_bytes")
    totals, shares = quota.charge_bytes, quota.share_bytes
    if totals is None and shares is None:
        return
    exempt = user_id in quota.share_exempt
    many_totals, many_shares = type(totals) is tuple, type(shares) is tuple
    for i, tag in enumerate(charges):
        bound = (totals[i] if i < len(totals) else None) if many_totals else totals
        if bound is not None and usage.charge(tag) + n > bound:
            raise QueueFull(f"{tag} would hold more than {bound} bytes "
                            "in this node's queues", quota="charge_bytes", tag=tag)
        if exempt:
            continue
        bound = (shares[i] if i < len(shares) else None) if many_shares else shares
        # a tag's share of a queue is at most all the queue holds
        if bound is not None and held > bound and usage.share(user_id, device_id, tag) + n > bound:
            raise QueueFull(f"{tag} would hold more than {bound} bytes of "
                            f"the queue of device {device_id}", quota="share_bytes", tag=tag)


def _bound(bounds: tuple[int | None, ...], i: int) -> int | None:
    return bounds[i] if i < len(bounds) else None
