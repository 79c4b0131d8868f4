"""JSON-RPC 2.0 (https://www.jsonrpc.org/specification) over a byte stream, one JSON
value per line (newline-delimited, UTF-8), on Trio. No I/O policy beyond framing and
dispatch: what the methods do is :mod:`cli.daemon.methods`.

A :class:`Peer` serves one connection: it reads requests one line at a time (at most
:data:`MAX_LINE` bytes; a longer line is a parse error and ends the connection; an
HTTP request line ends it unanswered: a web page can make a browser send an HTTP
request with a JSON-RPC line as its body to a loopback port),
runs each with the method table, writes the response, and lets the methods write
notifications (:meth:`Peer.notify`) to it at any time; writes never interleave.
Requests of one connection run one after the other, in order; batches (arrays) are
answered with an array; notifications from the client (no ``id``) get no answer. A
request has no deadline of its own here (a method bounds its own waits). A request
that was read runs to its answer even when the daemon is stopped meanwhile, for at
most ``finish_limit`` (default :data:`FINISH_LIMIT`) seconds from the moment the stop
began, so that no ``send`` vanishes unanswered; one still running then is cut off and
answered :data:`RUNTIME_ERROR` with ``data.reason`` ``"stopped"``, and the connection
is closed.

Errors: the spec's codes (:data:`PARSE_ERROR` ... :data:`INTERNAL_ERROR`) and the
daemon's own, in the range the spec leaves to servers (see docs/jsonrpc.md):
:data:`RUNTIME_ERROR` (what exits 1 on the command line), :data:`USAGE_ERROR`
(exit 2: unknown contact or group, bad text), :data:`SEND_UNKNOWN` (the message
left and no answer came; ``data.id`` names it).
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from cli.session.taskgroups import unwrap_single

__all__ = [
    "INTERNAL_ERROR", "INVALID_PARAMS", "INVALID_REQUEST", "MAX_LINE", "METHOD_NOT_FOUND",
    "PARSE_ERROR", "RUNTIME_ERROR", "SEND_UNKNOWN", "STOPPED", "USAGE_ERROR", "Handler", "Peer",
    "RpcError",
]

log = logging.getLogger(__name__)

MAX_LINE = 1 << 20  # bytes of one request line
WRITE_TIMEOUT = 10.0  # seconds a peer may leave a line unread before it is dropped
FINISH_LIMIT = 60.0  # seconds a request already read may still run once the daemon stops
STOPPED = "stopped"  # data.reason of a request cut off by the stop (after finish_limit)

PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603
RUNTIME_ERROR = -32000
USAGE_ERROR = -32001
SEND_UNKNOWN = -32002

_HTTP_REQUEST = re.compile(rb"[A-Z]{3,10} \S+ HTTP/\d(\.\d)?\r?")
"""An HTTP request line (RFC 9112 3): what a web browser writes first."""


class RpcError(Exception):
    """An error answer: ``{"code": code, "message": message[, "data": data]}``."""

    def __init__(self, code: int, message: str, data: Any = None) -> None:
        super().__init__(message)
        self.code, self.message, self.data = code, message, data

    def to_json(self) -> dict:
        """The ``error`` member of the response."""
        err: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.data is not None:
            err["data"] = self.data
        return err


Handler = Callable[["Peer", dict], Awaitable[Any]]
"""A method: ``await handler(peer, params)`` returns the JSON-able result or raises
:class:`RpcError` (params are always an object; positional params are refused)."""


class Peer:
    """One JSON-RPC connection.

    Args:
        stream: the connection (closed by the caller).
        methods: method name -> :data:`Handler`.
        name: for log lines.
        finish_limit: seconds a request read before the daemon began stopping may
            still run after that moment (then it is cut off and answered -32000).

    Attributes:
        closed: set once the connection ended (subscriptions end with it).
        subscriptions: ids of the subscriptions made on this connection (for the
            methods; the server ends them when the connection ends).
        confirming: subscription id -> the answer a confirming ``receive``
            subscription owes (:mod:`cli.daemon.methods`).
    """

    def __init__(self, stream: trio.abc.Stream, methods: dict[str, Handler], name: str,
                 *, finish_limit: float = FINISH_LIMIT) -> None:
        self._stream = stream
        self._finish_limit = finish_limit
        self._stop_at = math.inf  # trio time by which a running request must end
        self._finishing: trio.CancelScope | None = None  # the running request's
        self._methods = methods
        self.name = name
        self._write_lock = trio.Lock()
        self.closed = trio.Event()
        self.subscriptions: set[int] = set()
        self.confirming: dict[int, Any] = {}
        self._after: list[Callable[[], Awaitable[None]]] = []

    def after_reply(self, fn: Callable[[], Awaitable[None]]) -> None:
        """Run ``await fn()`` once the answer to the current request is written (e.g. the
        first notifications of a subscription, which must follow its id)."""
        self._after.append(fn)

    async def notify(self, method: str, params: dict) -> bool:
        """Write a notification; ``False`` (and the connection closed) if the peer is gone
        or left :data:`WRITE_TIMEOUT` seconds of output unread."""
        return await self._write({"jsonrpc": "2.0", "method": method, "params": params})

    async def _write(self, obj: Any) -> bool:
        if self.closed.is_set():
            return False
        data = (json.dumps(obj, ensure_ascii=False, separators=(",", ":")) + "\n").encode()
        async with self._write_lock:
            with trio.move_on_after(WRITE_TIMEOUT) as scope:
                try:
                    await self._stream.send_all(data)
                    return True
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    pass
            if scope.cancelled_caught:
                log.info("%s: output not read for %gs; dropped", self.name, WRITE_TIMEOUT)
        self.closed.set()
        return False

    async def serve(self) -> None:
        """Answer requests until the peer closes its side (or sends a line that is too
        long, or an HTTP request line), or until cancelled (the daemon stops): a request
        being run then still runs to its answer, for at most ``finish_limit`` seconds."""
        try:
            with unwrap_single():  # a method's unexpected error, as itself
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._watch_stop)
                    await self._read_loop()
                    nursery.cancel_scope.cancel()
        finally:
            self.closed.set()

    def cut_now(self) -> None:
        """The daemon must stop at once (a second Ctrl-C or SIGTERM): the request still
        running is cut off now (answered -32000 ``stopped``) and nothing more is read."""
        self._stop_at = trio.current_time()
        if self._finishing is not None:
            self._finishing.deadline = self._stop_at

    async def _watch_stop(self) -> None:
        """Wait until cancelled: by the end of :meth:`serve`, or by the daemon stopping,
        from which moment the running request (and the next, which cannot start: its
        read is cancelled) has ``finish_limit`` seconds left."""
        try:
            await trio.sleep_forever()
        finally:
            self._stop_at = trio.current_time() + self._finish_limit
            if self._finishing is not None:
                self._finishing.deadline = self._stop_at

    async def _read_loop(self) -> None:
        buf = bytearray()
        while True:
            nl = buf.find(b"\n")
            if nl < 0:
                if len(buf) > MAX_LINE:
                    await self._write(_error(None, RpcError(PARSE_ERROR, "line too long")))
                    return
                try:
                    chunk = await self._stream.receive_some(65536)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    return
                if not chunk:
                    return
                buf += chunk
                continue
            line, buf = bytes(buf[:nl]), buf[nl + 1:]
            if _HTTP_REQUEST.fullmatch(line):
                # a web page's request through the browser (cross-protocol: its
                # body could hold a JSON-RPC line): closed, nothing in it is run
                log.warning("%s: an HTTP request (a web page?) closed unanswered", self.name)
                return
            if self._stop_at < math.inf:  # stopping: a request read after it is not run
                return
            if line.strip():
                if not await self._answer(line):
                    return
                after, self._after = self._after, []
                for fn in after:
                    await fn()

    async def _answer(self, line: bytes) -> bool:
        """Run the request(s) of ``line`` and write the answer; ``False`` if the
        connection is to end (the peer is gone, or the request was cut off)."""
        # A request that was read is finished and answered even if the daemon is
        # stopped meanwhile (Ctrl-C): a send on its way reports how it went (stored,
        # or SEND_UNKNOWN with its id) instead of vanishing unanswered. The shield has
        # no deadline until the stop begins (_watch_stop), then finish_limit.
        done: list[dict | None] = []  # the answers to the members of a batch run so far
        with trio.CancelScope(shield=True, deadline=self._stop_at) as finishing:
            self._finishing = finishing
            try:
                reply = await self._handle_line(line, done)
            finally:
                self._finishing = None
        cut = finishing.cancelled_caught
        if cut:
            log.warning("%s: a request still running at the stop's deadline was cut off",
                        self.name)
            reply = _cut_off(line, done, self._finish_limit)
        with trio.CancelScope(shield=True):  # bounded by WRITE_TIMEOUT
            written = reply is None or await self._write(reply)
        return written and not cut

    async def _handle_line(self, line: bytes, done: list[dict | None]) -> Any:
        try:
            msg = json.loads(line, parse_constant=_no_constant)
        except (UnicodeDecodeError, ValueError):
            return _error(None, RpcError(PARSE_ERROR, "parse error: not JSON"))
        except RecursionError:  # arrays/objects nested thousands deep
            return _error(None, RpcError(PARSE_ERROR, "parse error: nested too deeply"))
        if isinstance(msg, list):
            if not msg:
                return _error(None, RpcError(INVALID_REQUEST, "empty batch"))
            for m in msg:
                done.append(await self._handle(m))
            return [r for r in done if r is not None] or None
        return await self._handle(msg)

    async def _handle(self, msg: Any) -> dict | None:
        if not isinstance(msg, dict) or msg.get("jsonrpc") != "2.0" \
                or not isinstance(msg.get("method"), str):
            rid = msg.get("id") if isinstance(msg, dict) else None
            return _error(rid, RpcError(INVALID_REQUEST, "invalid request"))
        rid, is_call = msg.get("id"), "id" in msg
        params = msg.get("params", {})
        try:
            if not isinstance(params, dict):
                raise RpcError(INVALID_PARAMS, "params must be an object")
            handler = self._methods.get(msg["method"])
            if handler is None:
                raise RpcError(METHOD_NOT_FOUND, f"no method {msg['method']!r}")
            result = await handler(self, params)
        except RpcError as exc:
            return _error(rid, exc) if is_call else None
        return {"jsonrpc": "2.0", "id": rid, "result": result} if is_call else None


def _no_constant(name: str) -> Any:
    """``NaN``/``Infinity`` are not JSON (RFC 8259 6); Python's parser takes them."""
    raise ValueError(f"{name} is not JSON")


def _cut_off(line: bytes, done: list[dict | None], limit: float) -> Any:
    """The answer to the request(s) of ``line`` (valid JSON: it was parsed) cut off by
    the stop: :data:`RUNTIME_ERROR` (``data.reason`` :data:`STOPPED`) for each call not
    answered yet, after the answers of the members of a batch already run (``done``)."""
    msg = json.loads(line)
    exc = RpcError(RUNTIME_ERROR, f"the daemon stopped; this request was cut off {limit:g}s later",
                   {"reason": STOPPED})
    if not isinstance(msg, list):
        return _error(msg.get("id"), exc) if isinstance(msg, dict) and "id" in msg else None
    cut = [_error(m.get("id"), exc) for m in msg[len(done):] if isinstance(m, dict) and "id" in m]
    return [r for r in done if r is not None] + cut or None


def _error(rid: Any, exc: RpcError) -> dict:
    return {"jsonrpc": "2.0", "id": rid, "error": exc.to_json()}
