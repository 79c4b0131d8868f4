"""trio-websocket's connection with its closing-state sends made safe, for both ends.

trio-websocket 0.12's reader task answers a Ping with a Pong and an oversized
message with a 1009 Close whatever the connection's state, and wsproto refuses both
once our own Close is out (``LocalProtocolError: ... cannot be sent in state
LOCAL_CLOSING``). That error left the reader task, the connection's nursery and,
on a node, trio-websocket's server (which has no per-connection boundary) or the
peer link's task: one Ping from the other end, sent after our Close, stopped the
whole node. :class:`SafeWebSocket` answers no Ping after our Close (RFC 6455 5.5.1:
only the other end's Close is awaited then), and turns any send that wsproto
refuses in the connection's state into :class:`~trio_websocket.ConnectionClosed`
(what the reader task and the opening handshake's callers expect of a broken
stream), after marking the connection aborted. The same holds for an upgrade
answer that h11 refuses: the reader task answered 400 to a request whose body
turned out malformed (``Transfer-Encoding: chunked`` and a bad chunk) while the
node's handler was accepting it (``h11.LocalProtocolError: ... without a pending
proposal``), which stopped the node just the same; and for the reader's 400 answer
to a malformed HTTP message, which wsproto also hands to a *client* (a malformed
upgrade answer from whatever listens at a peer's address: h11 cannot send a
response as the client, and that error left the node's peer link). That 400 answer
is also dropped when the stream broke meanwhile: a malformed upgrade request
followed at once by an RST made trio-websocket's reader raise ConnectionClosed,
which stopped the node every time.

:func:`wrap_client_stream` is trio-websocket's function of that name building a
:class:`SafeWebSocket` (the node's peer links and ``wa-cli`` connect with it); the
accepting side's :class:`relay.net.wsio.GatedWebSocket` derives from it. Both reach
into trio-websocket's internals (``_send``, ``_handle_ping_event``,
``_abort_web_socket``, ``_reader_task``, ``_open_handshake``), as of 0.12.
"""

from __future__ import annotations

import h11
import trio
from trio_websocket import CloseReason, ConnectionClosed, WebSocketConnection
from wsproto import ConnectionType, WSConnection
from wsproto.connection import ConnectionState
from wsproto.events import Event, Ping, RejectConnection
from wsproto.utilities import LocalProtocolError

__all__ = ["SafeWebSocket", "wrap_client_stream"]


class SafeWebSocket(WebSocketConnection):
    """A :class:`~trio_websocket.WebSocketConnection` whose reader task never raises
    wsproto's ``LocalProtocolError`` (see the module docstring)."""

    async def _handle_ping_event(self, event: Ping) -> None:
        if self._wsproto.state is ConnectionState.OPEN:
            await super()._handle_ping_event(event)

    async def _send(self, event: Event) -> None:
        try:
            await super()._send(event)
        except (LocalProtocolError, h11.LocalProtocolError) as exc:  # nothing was written
            await self._abort_web_socket()
            if isinstance(event, RejectConnection):
                return  # see below
            raise ConnectionClosed(self._close_reason or CloseReason(1006, None)) from exc
        except ConnectionClosed:  # the stream broke (trio-websocket aborted it already)
            if isinstance(event, RejectConnection):
                # The reader task sends wsproto's 400 answer to a malformed HTTP message
                # outside its ConnectionClosed handling, then closes the stream: a
                # client gone meanwhile (a malformed request, then an RST), a client
                # that cannot answer one (we are the client), or a request answered
                # already leave nothing to say. Callers of request.reject() see the
                # connection closed at their next send.
                return
            raise

    async def _abort_web_socket(self) -> None:
        try:
            await super()._abort_web_socket()
        except (LocalProtocolError, h11.LocalProtocolError):
            # wsproto says OPEN but cannot frame the Close the base sends first (an
            # upgrade answer that h11 refused half-way): mark it aborted all the same.
            if self._close_reason is None:
                await self._close_web_socket(1006)
            self._reader_running = False
            self._close_handshake.set()


async def wrap_client_stream(
    nursery: trio.Nursery, stream: trio.abc.Stream, host: str, resource: str, *,
    message_queue_size: int, max_message_size: int, receive_buffer_size: int,
) -> SafeWebSocket:
    """Open a client WebSocket over ``stream``: ``trio_websocket.wrap_client_stream``
    (same arguments, no subprotocols or extra headers) building a :class:`SafeWebSocket`;
    its reader task runs in ``nursery``. Returns once the node accepted the upgrade.

    Raises:
        trio_websocket.ConnectionRejected: (from the reader task, through ``nursery``)
            the upgrade was refused, e.g. HTTP 503.
    """
    connection = SafeWebSocket(
        stream, WSConnection(ConnectionType.CLIENT), host=host, path=resource,
        message_queue_size=message_queue_size, max_message_size=max_message_size,
        receive_buffer_size=receive_buffer_size)
    nursery.start_soon(connection._reader_task)
    await connection._open_handshake.wait()
    return connection
