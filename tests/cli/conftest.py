"""Fixtures of the CLI tests: their ``wa-cli`` commands (:mod:`cli_procs`) go through
the session's fork server (``wa_cli_forks``, tests/conftest.py)."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _forked_wa_cli(wa_cli_forks: None) -> None:
    """Every CLI test runs with the fork server up."""
