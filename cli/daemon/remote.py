"""The other ``wa-cli`` commands' side of the daemon: find the daemon of a home and call
it (blocking sockets, no Trio: a command makes a few calls and exits).

:func:`find_daemon` connects to ``HOME/daemon.sock``; ``None`` if no daemon answers
(no socket file, or a stale one). :meth:`Remote.call` sends one request and returns
its result; notifications that arrive meanwhile are queued for :meth:`Remote.notifications`.
"""

from __future__ import annotations

import contextlib
import json
import signal
import socket
import time
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from cli.daemon.jsonrpc import MAX_LINE

__all__ = ["SOCKET_FILE", "DaemonGone", "Remote", "RemoteError", "find_daemon", "socket_path"]

SOCKET_FILE = "daemon.sock"


def socket_path(home: Path) -> Path:
    """Where the daemon of ``home`` listens."""
    return home / SOCKET_FILE

CONNECT_TIMEOUT = 2.0  # seconds to connect to a local socket
ANSWER_TIMEOUT = 120.0  # seconds; above a send's connect, key claims and request deadlines
_STOP = {signal.SIGINT, signal.SIGTERM}


class RemoteError(Exception):
    """An error answer of the daemon (``code``, ``message``, ``data``), or a broken link
    to it (``code`` None)."""

    def __init__(self, code: int | None, message: str, data: Any = None) -> None:
        super().__init__(message)
        self.code, self.message, self.data = code, message, data


class DaemonGone(RemoteError):
    """The daemon closed the connection or it broke (``code`` None): the daemon stopped
    (SIGTERM, Ctrl-C) or died."""


class Remote:
    """A JSON-RPC connection to a daemon (close it, or use it as a context manager)."""

    def __init__(self, sock: socket.socket, path: Path) -> None:
        self._sock = sock
        self.path = path
        self._buf = bytearray()
        self._queued: deque[dict] = deque()
        self._next_id = 1

    def __enter__(self) -> Remote:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection."""
        self._sock.close()

    def _read(self, timeout: float | None) -> dict | None:
        """The next JSON object from the daemon; ``None`` after ``timeout`` s of silence.

        Raises:
            RemoteError: the daemon closed the connection or sent garbage.
        """
        self._sock.settimeout(timeout)
        while True:
            nl = self._buf.find(b"\n")
            if nl >= 0:
                line, self._buf = bytes(self._buf[:nl]), self._buf[nl + 1:]
                try:
                    obj = json.loads(line)
                except ValueError as exc:
                    raise RemoteError(None, f"the daemon sent a bad line: {exc}") from exc
                if isinstance(obj, dict):
                    return obj
                continue
            if len(self._buf) > MAX_LINE:
                raise RemoteError(None, "the daemon sent a line that is too long")
            try:
                chunk = self._sock.recv(65536)
            except TimeoutError:
                return None
            except OSError as exc:
                raise DaemonGone(None, f"lost the connection to the daemon: {exc}") from exc
            if not chunk:
                raise DaemonGone(None, "the daemon closed the connection")
            self._buf += chunk

    def call(self, method: str, params: dict | None = None, *, shielded: bool = False,
             timeout: float | None = ANSWER_TIMEOUT,
             on_notification: Callable[[dict], bool] | None = None) -> Any:
        """Call ``method`` and wait for its result.

        Args:
            shielded: once the request is written, SIGINT and SIGTERM are held back
                until the answer is in, and then discarded: the action happened, and
                the caller reports it (``wa-cli send``: exit 0).
            timeout: seconds to wait for the answer (``None``: forever); a daemon that
                stays silent longer is given up (``RemoteError``, code ``None``).
            on_notification: called with each notification that arrives before the
                answer (e.g. ``progress``); one it returns ``False`` for is queued for
                :meth:`notifications` as usual.

        Raises:
            RemoteError: an error answer, or the connection broke.
        """
        rid, self._next_id = self._next_id, self._next_id + 1
        data = json.dumps({"jsonrpc": "2.0", "id": rid, "method": method,
                           "params": params or {}}).encode() + b"\n"
        with _held_signals() if shielded else contextlib.nullcontext() as held:
            try:
                self._sock.sendall(data)
            except OSError as exc:
                raise DaemonGone(None, f"lost the connection to the daemon: {exc}") from exc
            deadline = None if timeout is None else time.monotonic() + timeout
            while True:
                left = None if deadline is None else max(0.001, deadline - time.monotonic())
                msg = self._read(left)
                if msg is None:
                    raise RemoteError(None, f"no answer from the daemon within {timeout:g}s")
                if "method" in msg and "id" not in msg:
                    if on_notification is None or not on_notification(msg):
                        self._queued.append(msg)
                    continue
                if msg.get("id") != rid:
                    continue
                if "error" in msg:
                    err = msg["error"] if isinstance(msg["error"], dict) else {}
                    raise RemoteError(err.get("code"), str(err.get("message", "error")),
                                      err.get("data"))
                if held is not None:
                    held.done = True
                return msg.get("result")

    def notifications(self, idle: float | None = None) -> Iterator[dict]:
        """Yield notifications (``{"method", "params"}``) as they come; stop after ``idle``
        seconds without one (never if ``None``).

        Raises:
            RemoteError: the connection broke.
        """
        while True:
            while self._queued:
                yield self._queued.popleft()
            msg = self._read(idle)
            if msg is None:
                return
            if "method" in msg and "id" not in msg:
                yield msg


class _Held:
    done = False  # the action happened: stop signals stay ignored


@contextlib.contextmanager
def _held_signals() -> Iterator[_Held]:
    """Block SIGINT and SIGTERM (this process has no other thread); on exit drop the ones
    that came meanwhile, and keep ignoring them if the block set ``done``."""
    held = _Held()
    signal.pthread_sigmask(signal.SIG_BLOCK, _STOP)
    try:
        yield held
    finally:
        old = {s: signal.signal(s, signal.SIG_IGN) for s in _STOP}
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP)  # a pending ignored signal is dropped
        if not held.done:
            for s, handler in old.items():
                signal.signal(s, handler)


def find_daemon(home: Path) -> Remote | None:
    """A connection to the daemon of ``home``, or ``None`` if none runs there."""
    path = socket_path(home)
    if not path.exists():
        return None
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(CONNECT_TIMEOUT)
    try:
        sock.connect(str(path))
    except OSError:  # refused: a stale socket file; missing: it just stopped
        sock.close()
        return None
    return Remote(sock, path)
