"""How one :class:`~relay.net.link.Link` behaves: timeouts, keepalive, window, buffers."""

from __future__ import annotations

from dataclasses import dataclass, field

from relay.protocol import DEFAULT_LIMITS
from relay.protocol.keepalive import DEFAULT_KEEPALIVE, KeepaliveConfig
from relay.protocol.session import DEFAULT_WINDOW

__all__ = ["DEFAULT_SETTINGS", "LinkSettings"]


@dataclass(frozen=True, slots=True)
class LinkSettings:
    """How one link behaves. All times in seconds, sizes in bytes or frames.

    Attributes:
        connect_timeout: for the TCP (+TLS) connect, the WebSocket opening handshake,
            and each step of the protocol handshake.
        request_timeout: default deadline of :meth:`Link.request` (``None``: the caller
            owns timeouts).
        keepalive: ping after ``interval`` s of silence, give up ``timeout`` s later.
        window: most requests in flight (pipelining).
        push_buffer: frames :attr:`Link.pushes` holds; 0: pushes are dropped (a link
            that expects none, such as a peer link).
        write_buffer: frames queued for the writer.
        max_message: largest WebSocket message accepted (1009 above).
        message_queue: messages trio-websocket buffers before the reader takes them.
        receive_buffer: bytes per socket read.
        strict: a frame that cannot be decoded closes the link (else it is logged and
            skipped).
        shield_close: a cancelled exit still waits for the closing handshake.
        raw: nothing is classified: every received frame goes to :attr:`Link.pushes` in
            order, answers included (the other end's pings are still answered and not
            passed on); use :meth:`Link.send` with the ids you choose. For tests and
            tools that speak raw frames; set ``keepalive`` interval 0 with it.
    """

    connect_timeout: float = 10.0
    request_timeout: float | None = 30.0
    keepalive: KeepaliveConfig = field(default=DEFAULT_KEEPALIVE)
    window: int = DEFAULT_WINDOW
    push_buffer: int = 1024
    write_buffer: int = 16
    max_message: int = DEFAULT_LIMITS.max_peer_frame
    message_queue: int = 16
    receive_buffer: int = 64 * 1024
    strict: bool = False
    shield_close: bool = True
    raw: bool = False


DEFAULT_SETTINGS = LinkSettings()
