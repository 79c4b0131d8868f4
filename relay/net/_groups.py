"""Exception groups from the link's nursery, made readable: a group holding exactly one
exception (at any depth) is re-raised as that exception. Nothing is swallowed: a group
of several propagates unchanged, and a lone ``trio.Cancelled`` is re-raised as itself,
so its cancel scope still catches it."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["single_leaf", "unwrap_single"]


def single_leaf(group: BaseExceptionGroup) -> BaseException | None:
    """The only non-group exception inside ``group`` (nested groups flattened), or
    ``None`` if there are several."""
    leaves: list[BaseException] = []
    stack = [group]
    while stack:
        for exc in stack.pop().exceptions:
            (stack.append(exc) if isinstance(exc, BaseExceptionGroup) else leaves.append(exc))
    return leaves[0] if len(leaves) == 1 else None


@contextmanager
def unwrap_single() -> Iterator[None]:
    """Re-raise an exception group with a single leaf as that leaf (with its own
    traceback and cause); any other exception passes unchanged."""
    try:
        yield
    except BaseExceptionGroup as group:  # re-raised, never swallowed
        leaf = single_leaf(group)
        if leaf is None:
            raise
        raise leaf from leaf.__cause__
