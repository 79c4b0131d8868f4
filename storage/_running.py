"""The shared lifetime of a backend whose writes go through one writer task."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import trio

S = TypeVar("S")


@asynccontextmanager
async def running_writer(writer: Any, storage: S) -> AsyncIterator[S]:
    """Run ``writer.serve`` (a group-commit writer supporting ``nursery.start``) for the
    block and yield ``storage``; ``await storage.aclose()`` on exit, which lets the
    writer commit what is queued and return.

    The writer task does not raise, so an exception group here only wraps what the
    caller's block raised: a group of one is re-raised as that exception (with its
    cause), as callers of ``open_storage`` expect; larger groups propagate unchanged.
    """
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(writer.serve)
            try:
                yield storage
            finally:
                await storage.aclose()
    except BaseExceptionGroup as group:
        if len(group.exceptions) == 1:
            inner = group.exceptions[0]
            raise inner from inner.__cause__
        raise
