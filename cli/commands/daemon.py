"""``wa-cli daemon [--tcp PORT]``: keep this device connected and serve JSON-RPC 2.0
(docs/jsonrpc.md) on ``HOME/daemon.sock``; the other commands of the home go through it."""

from __future__ import annotations

import functools
import math
import os

import click
import trio

from cli.commands._common import AppContext, failures, json_option, state_of
from cli.commands._signals import until_signal
from cli.daemon.jsonrpc import FINISH_LIMIT
from cli.daemon.server import Listening, serve_daemon
from cli.session.state import State
from relay.net.backoff import CLIENT_RECONNECT

FINISH_LIMIT_ENV = "WA_DAEMON_FINISH_LIMIT"
"""Seconds a request read before the stop may still run after it (default
:data:`cli.daemon.jsonrpc.FINISH_LIMIT`); for tests and service managers with a
shorter stop timeout."""


def _finish_limit() -> float:
    raw = os.environ.get(FINISH_LIMIT_ENV)
    if raw is None:
        return FINISH_LIMIT
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not 0 < value < math.inf:
        raise click.UsageError(f"{FINISH_LIMIT_ENV}={raw!r}: must be a positive number of seconds")
    return value


async def _serve(app: AppContext, state: State, tcp_port: int | None,
                 finish_limit: float, stop_now: trio.Event) -> None:
    async with trio.open_nursery() as nursery:
        where: Listening = await nursery.start(functools.partial(
            serve_daemon, state, lambda s: app.connect(s), CLIENT_RECONNECT.delays,
            tcp_port=tcp_port, finish_limit=finish_limit, stop_now=stop_now))
        obj = {"socket": str(where.socket)}
        human = f"serving {where.socket}"
        if where.tcp is not None:
            obj["tcp"] = f"{where.tcp[0]}:{where.tcp[1]}"
            human += f" and tcp {obj['tcp']}"
        app.out.emit(obj, f"{human} ({how_to_stop()})")


def how_to_stop() -> str:
    """How a user stops this process: ``Ctrl-C to stop`` when it runs in the foreground
    of its controlling terminal (its process group is the terminal's foreground one,
    which gets the terminal's SIGINT), else ``stop it with: kill PID`` (SIGTERM): a
    background job (``wa-cli daemon &``), or no terminal at all (a service, a pipe)."""
    try:
        tty = os.open("/dev/tty", os.O_RDONLY | os.O_NOCTTY)  # the controlling terminal
    except OSError:  # none
        foreground = False
    else:
        try:
            foreground = os.tcgetpgrp(tty) == os.getpgrp()
        except OSError:
            foreground = False
        finally:
            os.close(tty)
    return "Ctrl-C to stop" if foreground else f"stop it with: kill {os.getpid()}"


@click.command()
@click.option("--tcp", "tcp_port", type=click.IntRange(0, 65535), metavar="PORT",
              help="Also serve JSON-RPC on 127.0.0.1:PORT (0: any free port). Anyone who "
                   "can connect to this machine's loopback can use it: only on single-user "
                   "machines and containers.")
@json_option
@click.pass_obj
def daemon(app: AppContext, tcp_port: int | None) -> None:
    """Keep this device connected and serve JSON-RPC 2.0 on HOME/daemon.sock.

    The first line says where ({"socket": PATH} with --json). While it runs,
    the other commands of the same --home use it: 'wa-cli recv' (also --follow,
    several at once), send, react, contacts add, devices approve and the other
    changing ones go through it, and read-only ones (id, history, contacts list,
    outbox, ...) read the state beside it. Messages received while no 'recv' or
    JSON-RPC 'receive' subscriber listens wait in the device's inbox. Ctrl-C (in
    the terminal's foreground) or SIGTERM ('kill PID', as the first line says when
    it runs in the background) stops it (exit code 0): requests already read are
    answered first (at most WA_DAEMON_FINISH_LIMIT, 60 s, an upload for instance); a
    second Ctrl-C or SIGTERM cuts them off at once. Methods: docs/jsonrpc.md.
    """
    finish_limit = _finish_limit()
    stop_now = trio.Event()  # a second signal: cut off what is still running
    with state_of(app) as state, failures():
        try:
            trio.run(functools.partial(until_signal, again=stop_now.set), _serve, app, state,
                     tcp_port, finish_limit, stop_now)
        finally:
            state.inbox.settle()
            state.save()
