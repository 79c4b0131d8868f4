"""Fixtures of the CLI tests: one ``wa-cli`` fork server for the session
(:mod:`forkserver`), through which :mod:`cli_procs` starts its commands."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from cli_procs import serve_forks
from forkserver import ForkServer, enabled


@pytest.fixture(scope="session", autouse=True)
def _wa_cli_fork_server() -> Iterator[None]:
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
