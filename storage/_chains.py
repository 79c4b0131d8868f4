"""Order across refusals within one ``enqueue_many`` call (shared by the backends).

:meth:`storage.base.Storage.enqueue_many` skips a sending device's later requests
for the devices of one of its refused requests (same error class, nothing
written), so that a refused message, resent, cannot land behind a later one. A
backend computes each request's *chain keys* with :func:`chain_keys` (one per
``(sender, receiving device)``, scoped to the call by a token) and keeps a
:class:`Chains` per batch it runs: :meth:`Chains.blocking` before a request is
applied, :meth:`Chains.record` once its answer is known (in request order).
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable

from .base import EnqueueRequest
from .errors import StorageError

ChainKey = tuple[Hashable, str, int, str, int]
"""``(call token, sender user, sender device, receiving user, receiving device)``."""

SKIPPED = ("not stored: an earlier message of the same sending device to this device "
           "was refused in the same batch")


def chain_keys(token: Hashable, req: EnqueueRequest) -> frozenset[ChainKey]:
    """The chain keys of ``req`` within the call ``token`` (empty without a sender).

    Raises:
        TypeError: ``req.sender`` is not ``None`` nor a ``(str, int)`` pair.
    """
    if req.sender is None:
        return frozenset()
    if (not isinstance(req.sender, tuple) or len(req.sender) != 2
            or not isinstance(req.sender[0], str) or type(req.sender[1]) is not int):
        raise TypeError(f"sender must be (user_id, device_id), not {req.sender!r}")
    su, sd = req.sender
    return frozenset((token, su, sd, u, d) for u, d, _ in req.items)


def skipped(err: StorageError) -> StorageError:
    """The refusal of a request skipped because of ``err``: the same class (same
    error code on the wire), saying why; ``root`` is the first refusal."""
    root = getattr(err, "root", err)
    new = type(root)(f"{SKIPPED} ({root})")
    new.root = root  # type: ignore[attr-defined]
    return new


class Chains:
    """The refusals seen so far in one batch, by chain key (not thread-safe; one
    batch at a time)."""

    __slots__ = ("_refused",)

    def __init__(self, refused: dict[ChainKey, StorageError] | None = None) -> None:
        self._refused: dict[ChainKey, StorageError] = dict(refused or {})

    def blocking(self, keys: Iterable[ChainKey]) -> StorageError | None:
        """The refusal a request with ``keys`` must answer with (already wrapped by
        :func:`skipped`), or ``None`` if it may be applied."""
        for key in keys:
            err = self._refused.get(key)
            if err is not None:
                return skipped(err)
        return None

    def record(self, keys: Iterable[ChainKey], error: BaseException | None) -> None:
        """Note a request's answer: a :class:`StorageError` blocks its keys."""
        if isinstance(error, StorageError):
            for key in keys:
                self._refused.setdefault(key, error)

    def fork(self) -> Chains:
        """A copy for one attempt (an aborted attempt's refusals are forgotten)."""
        return Chains(self._refused)
