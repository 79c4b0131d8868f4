"""Resumable work over a device connection: :class:`Reconnecting` hands out a live
:class:`~cli.session.session.Session` and, after a dropped connection (also one the keepalive
declared dead, or a request past its deadline), a failed connect or a retryable
relay error, reconnects (with backoff) and runs the step again. Steps must
resume by themselves (media uploads ask ``media_status``, downloads keep a partial file).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager, AsyncExitStack
from typing import TypeVar

import trio

from cli.errors import ConnectionFailed, ConnectionLost, RelayError
from cli.session.connection import CLIENT_SETTINGS
from cli.session.session import Session, open_session
from cli.session.state import State
from relay.net import LinkSettings
from relay.net.backoff import TRANSFER_RETRY, Backoff

log = logging.getLogger(__name__)

T = TypeVar("T")
Opener = Callable[..., AbstractAsyncContextManager[Session]]


class Reconnecting:
    """Runs resumable steps on a :class:`Session`, reconnecting after a dropped connection.

    Args:
        state: the device state.
        connect_timeout: seconds per connection attempt.
        settings: keepalive and request deadline (:func:`cli.connection.client_settings`).
        attempts: most tries of one :meth:`run` (the first included).
        backoff: the retry policy (default :data:`relay.net.backoff.TRANSFER_RETRY`: 0.2 s
            doubling up to 5 s).
        retry_codes: relay error codes worth retrying (default: ``unavailable``).
        opener: opens a session of ``state`` (keyword arguments ``connect_timeout`` and
            ``settings``); default :func:`cli.session.session.open_session`, the
            commands pass :func:`cli.client.open_client`.

    Use as an async context manager (from one task); the connection is closed on exit.
    """

    def __init__(self, state: State, *, connect_timeout: float = 10.0, attempts: int = 6,
                 backoff: Backoff = TRANSFER_RETRY,
                 retry_codes: frozenset[str] = frozenset({"unavailable"}),
                 settings: LinkSettings = CLIENT_SETTINGS, opener: Opener = open_session):
        self.state = state
        self._timeout = connect_timeout
        self._settings = settings
        self._attempts = attempts
        self._backoff = backoff
        self._retry_codes = retry_codes
        self._opener = opener
        self._stack: AsyncExitStack | None = None
        self._client: Session | None = None

    async def __aenter__(self) -> Reconnecting:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._drop()

    async def client(self) -> Session:
        """The current session, connecting if there is none.

        Raises:
            ConnectionFailed, RelayError: see :func:`cli.session.session.open_session`.
        """
        if self._client is None:
            stack = AsyncExitStack()  # nothing to close if entering fails
            self._client = await stack.enter_async_context(
                self._opener(self.state, connect_timeout=self._timeout, settings=self._settings))
            self._stack = stack
        return self._client

    async def _drop(self) -> None:
        stack, self._stack, self._client = self._stack, None, None
        if stack is not None:
            await stack.aclose()

    async def run(self, step: Callable[[Session], Awaitable[T]]) -> T:
        """Run ``step(session)``; after a lost connection, a failed connect or a retryable
        relay error, reconnect and run it again (it must resume by itself).

        Raises:
            The last error once :attr:`attempts` tries failed; other errors at once.
        """
        delays = self._backoff.delays()
        for attempt in range(1, self._attempts + 1):
            try:
                return await step(await self.client())
            except (ConnectionLost, ConnectionFailed, RelayError) as exc:
                if isinstance(exc, RelayError) and exc.code not in self._retry_codes:
                    raise
                await self._drop()
                if attempt == self._attempts:
                    raise
                delay = next(delays)
                log.info("transfer interrupted (%s); retrying in %.1fs", exc, delay)
                await trio.sleep(delay)
        raise AssertionError("unreachable")  # pragma: no cover
