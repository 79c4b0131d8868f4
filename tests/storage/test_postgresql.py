"""The PostgreSQL backend: the shared conformance suite, then what only a shared
database has: claims from several processes, connections killed mid-batch, the
commit token, migrations, URLs."""

from __future__ import annotations

import hashlib
from contextlib import AbstractAsyncContextManager

import pytest

from storage import Storage
from storage.postgresql import PostgresStorage
from storage.testing import StorageConformance


class TestPostgresStorage(StorageConformance):
    reopen_supported = True

    @pytest.fixture(autouse=True)
    def _pg(self, postgres_db: str, request: pytest.FixtureRequest) -> None:
        self.pg_url = postgres_db
        self.pg_schema = "t_" + hashlib.sha256(request.node.nodeid.encode()).hexdigest()[:16]

    def make_storage(self) -> AbstractAsyncContextManager[Storage]:
        return PostgresStorage.from_url(f"{self.pg_url}&schema={self.pg_schema}")

    def make_small_storage(self) -> AbstractAsyncContextManager[Storage]:
        return PostgresStorage.from_url(
            f"{self.pg_url}&schema={self.pg_schema}_small&max_bytes=262144")
