"""Hooks and helpers shared by the conformance mixins."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import ClassVar, TypeVar

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
    def _conformance_setup(self, request: pytest.FixtureRequest, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        needs = getattr(request.function, "conformance_needs", None)
        if needs == "reopen" and not self.reopen_supported:
            pytest.skip("backend is not persistent (reopen_supported = False)")
        if needs == "small" and (
            type(self).make_small_storage is ConformanceBase.make_small_storage
        ):
            pytest.skip("backend provides no make_small_storage()")

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
        """Open the store under test (or the small one) with the per-test timeout guard."""
        with trio.fail_after(self.test_timeout):
            cm = self.make_small_storage() if small else self.make_storage()
            async with cm as st:
                yield st


F = TypeVar("F", bound=Callable[..., object])


def needs(what: str) -> Callable[[F], F]:
    """Mark a conformance test as needing ``"reopen"`` or ``"small"`` support (else skipped)."""
    def mark(fn: F) -> F:
        fn.conformance_needs = what  # type: ignore[attr-defined]
        return fn
    return mark
