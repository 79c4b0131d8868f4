"""The memory backend against the shared conformance suite, plus its capacity bound."""

from contextlib import AbstractAsyncContextManager

from storage import Storage
from storage.memory import MemoryStorage
from storage.testing import StorageConformance


class TestMemoryStorage(StorageConformance):
    def make_storage(self) -> AbstractAsyncContextManager[Storage]:
        return MemoryStorage.from_url("memory://")

    def make_small_storage(self) -> AbstractAsyncContextManager[Storage]:
        return MemoryStorage.from_url("memory://?capacity_bytes=262144")
