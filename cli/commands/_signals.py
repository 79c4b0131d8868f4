"""Ctrl-C (SIGINT) and SIGTERM in the commands: they cancel the running action, never
raise ``KeyboardInterrupt`` through it, and the exit code says whether the action
happened (docs/cli.md, "Exit codes"):

- the action finished -> its normal output and exit code 0, also when a signal came
  after the point of no return (:class:`Guard`: a ``send`` whose request is on its way
  is not cancelled, it finishes and reports, see
  :attr:`cli.session.session.Session.commit_hook`);
- the signal stopped it -> "interrupted" on stderr and exit code 130.
"""

from __future__ import annotations

import signal
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from functools import partial
from typing import TypeVar

import trio

from cli.session.taskgroups import unwrap_single

__all__ = ["STOP_SIGNALS", "Guard", "Interrupted", "run_interruptible", "sigterm_interrupts",
           "until_signal"]

T = TypeVar("T")
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(Exception):
    """A signal stopped the action before it happened (exit code 130)."""


class Guard:
    """Whether the action passed its point of no return (:meth:`commit`): from then on a
    signal no longer cancels it."""

    def __init__(self) -> None:
        self.committed = False
        self.in_run = False  # inside trio.run (a signal must not raise there)
        self.signalled = False  # a stop signal came inside trio.run, outside the receiver

    def commit(self) -> None:
        """The action is under way and cannot be taken back (e.g. a request is leaving)."""
        self.committed = True


async def until_signal(fn: Callable[..., Awaitable[T]], *args, guard: Guard | None = None,
                       again: Callable[[], None] | None = None) -> tuple[T | None, bool]:
    """``await fn(*args)``, cancelled by the first SIGINT or SIGTERM unless ``guard`` was
    committed by then; returns ``(result, False)``, or ``(None, True)`` if a signal
    cancelled it. ``again()``, if given, is called for every later signal while ``fn``
    still runs (a process that finishes work after the first one: the second one means
    "now"). Errors of ``fn`` are raised as themselves. Must run in the main thread."""
    interrupted = False
    result: list[T] = []

    async def cancel_on_signal(signals, scope: trio.CancelScope) -> None:  # noqa: ANN001
        nonlocal interrupted
        async for _ in signals:
            if interrupted:
                if again is not None:
                    again()
                continue
            if guard is not None and guard.committed:
                continue  # it finishes and says how it went
            interrupted = True
            scope.cancel()
            if again is None:
                return

    with unwrap_single(), trio.open_signal_receiver(*STOP_SIGNALS) as signals:
        if guard is not None and guard.signalled and not guard.committed:
            return None, True  # it came while Trio was starting: nothing happened yet
        async with trio.open_nursery() as nursery:
            with trio.CancelScope() as work:
                nursery.start_soon(cancel_on_signal, signals, work)
                result.append(await fn(*args))
            nursery.cancel_scope.cancel()
    if result:
        return result[0], False
    return None, interrupted


def run_interruptible(fn: Callable[..., Awaitable[T]], *args, guard: Guard | None = None) -> T:
    """``trio.run(fn, *args)`` with SIGINT and SIGTERM cancelling it (see :func:`until_signal`).

    With a ``guard``, SIGINT and SIGTERM outside the receiver count only until the guard
    is committed: before ``trio.run`` they raise ``KeyboardInterrupt``; inside it (Trio
    starting, or ending after ``fn`` returned) they are noted, never raised into Trio's
    own code (a ``TrioInternalError``), and a noted one stops ``fn`` before it starts.
    Once the action happened both are ignored for the rest of the process (the
    interpreter's teardown included), so that no late signal turns a done action into
    exit code 130.

    Raises:
        Interrupted: a signal cancelled ``fn`` before it returned.
    """
    if guard is None:
        result, interrupted = trio.run(partial(until_signal, fn), *args)
    else:
        def handler(signum: int, frame: object) -> None:
            if guard.committed:
                return
            if guard.in_run:
                guard.signalled = True
                return
            raise KeyboardInterrupt

        old = {s: signal.signal(s, handler) for s in STOP_SIGNALS}
        try:
            guard.in_run = True
            result, interrupted = trio.run(partial(until_signal, fn, guard=guard), *args)
        finally:
            guard.in_run = False
            for s in STOP_SIGNALS:
                signal.signal(s, signal.SIG_IGN if guard.committed else old[s])
    if interrupted:
        raise Interrupted
    return result  # type: ignore[return-value]


@contextmanager
def sigterm_interrupts() -> Iterator[None]:
    """Within the block (blocking code, not trio), SIGTERM raises ``KeyboardInterrupt``
    as SIGINT does."""

    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)
