"""Hooks and helpers shared by the conformance mixins."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import ClassVar

import pytest
import trio

from ..base import Storage


def uid(n: int | str) -> str:
    """A realistic 52-char lowercase base32 ``user_id`` derived from ``n``."""
    digest = hashlib.sha256(f"conformance-user-{n}".encode()).digest()
    return base64.b32encode(digest).decode().lower().rstrip("=")


ALICE = uid("alice")
BOB = uid("bob")


class ConformanceBase:
    """The hooks a backend's test class provides (see :class:`storage.testing.StorageConformance`)."""

    #: True if :meth:`make_storage` called again in the same test opens the same,
    #: persisted store (enables the durability tests).
    reopen_supported: ClassVar[bool] = False
    #: Seconds every test may take at most (``trio.fail_after`` guard).
    test_timeout: ClassVar[float] = 20.0
    #: A fresh per-test temporary directory, set before each test.
    tmp_path: Path

    @pytest.fixture(autouse=True)
    def _conformance_tmp_path(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path

    def make_storage(self) -> AbstractAsyncContextManager[Storage]:
        """Return an async context manager that opens the backend under test.

        Each test gets a fresh, empty store on its first call. If
        :attr:`reopen_supported`, later calls in the same test must open the
        same store again (e.g. the same directory under :attr:`tmp_path`).
        """
        raise NotImplementedError

    def make_small_storage(self) -> AbstractAsyncContextManager[Storage]:
        """Optional: open a fresh store whose capacity is a few hundred KiB at most,
        to test :class:`~storage.errors.StorageFull`. Not overridden: those tests skip."""
        raise NotImplementedError

    @asynccontextmanager
    async def opened(self, *, small: bool = False) -> AsyncIterator[Storage]:
        """Open the store under test with the per-test timeout guard."""
        with trio.fail_after(self.test_timeout):
            if small:
                try:
                    cm = self.make_small_storage()
                except NotImplementedError:
                    pytest.skip("backend provides no make_small_storage()")
            else:
                cm = self.make_storage()
            async with cm as st:
                yield st

    def require_reopen(self) -> None:
        """Skip the calling test unless the backend persists across reopen."""
        if not self.reopen_supported:
            pytest.skip("backend is not persistent (reopen_supported = False)")
