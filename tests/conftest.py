"""Suite-wide fixtures: a real PostgreSQL server for the tests that ask for one.

``postgres_server`` (session) starts a throwaway server on a Unix socket
(:mod:`storage.testing.postgres_server`), installing one if none is found and
``CI=true`` (as root: the distribution package; else the ``pgserver`` wheel).
Without a server the tests that need it skip, except in CI (``CI=true``),
where a missing PostgreSQL fails the run. ``postgres_db`` gives each test module
a fresh database and yields its ``postgresql://`` URL.
"""

from __future__ import annotations

import os
import re
import signal
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

# Rich assertion messages for the conformance suite shipped inside the package,
# registered here, before any test module (bench's, too) imports storage.testing.
pytest.register_assert_rewrite("storage.testing")

if TYPE_CHECKING:
    from storage.testing.postgres_server import LocalPostgres


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[LocalPostgres]:
    from storage.testing.postgres_server import LocalPostgres, find_bindir, install_postgres

    bindir = find_bindir()
    if bindir is None and (_in_ci() or os.environ.get("WA_PG_INSTALL") == "1"):
        bindir = install_postgres()
    if bindir is None:
        msg = ("PostgreSQL server binaries not found (initdb/pg_ctl on PATH, "
               "/usr/lib/postgresql/*/bin, or the pgserver wheel); install the "
               "'postgresql' package or set WA_PG_BINDIR")
        if _in_ci():
            pytest.fail(msg, pytrace=False)
        pytest.skip(msg)
    server = LocalPostgres.start(bindir=bindir)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def postgres_db(postgres_server: LocalPostgres, request: pytest.FixtureRequest) -> str:
    """A fresh database for this test module; its ``postgresql://`` URL (no schema)."""
    prefix = re.sub(r"[^a-z0-9]+", "_", request.module.__name__.rsplit(".", 1)[-1].lower())[:30]
    return postgres_server.url(postgres_server.create_database(prefix))


@pytest.fixture(scope="session")
def wa_cli_forks() -> Iterator[None]:
    """Start ``wa-cli`` commands of this session through one fork server (unless
    ``WA_TEST_FORK_SERVER=0``); stopped at the end of the session."""
    from tests.forkserver import ForkServer, enabled, serve_forks

    if not enabled():
        yield
        return
    server = ForkServer()
    server.start()
    serve_forks(server)
    try:
        yield
    finally:
        serve_forks(None)
        server.close()


@pytest.fixture(autouse=True)
def _restore_stop_signals() -> Iterator[None]:
    """Put SIGINT and SIGTERM back after each test. A ``wa-cli`` command that has done
    its action ignores both for the rest of its process (cli.commands._signals); run
    in-process (Click's runner) it would leave this pytest process ignoring SIGTERM,
    and every child started afterwards (``wa-relay serve``) would inherit that."""
    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    yield
    for sig, handler in saved.items():
        if handler is not None:
            signal.signal(sig, handler)

