"""Errors of the client library (:mod:`cli.connection`, :mod:`cli.client`).

Messages are user-facing; the CLI prints them and exits 1.
"""

from __future__ import annotations

from relay.protocol.frames import Error


class ClientError(Exception):
    """Base of every client-side runtime failure."""


class ConnectionFailed(ClientError):
    """Could not connect to, or complete the handshake with, a relay node."""


class ConnectionLost(ClientError):
    """The connection closed (or stopped answering: keepalive overdue, a request's
    deadline passed) while a request was outstanding or a stream was open."""


class NoAnswer(ConnectionLost):
    """A request left but its answer never came (the connection was lost, the keepalive
    gave up on it, or its deadline passed): the relay may or may not have acted on it.
    Requests that carry their own id (``send``: ``msg_id``) are safe to repeat with it."""


class NotOpenedYet(ClientError):
    """A received envelope could not be opened for now: opening it needed the relay
    (e.g. the sender's device list or identity from the sender's home node) and the
    relay could not serve that (``unavailable``) or did not answer in time. Nothing
    was acknowledged from it on: it stays queued at the home node, and the envelopes
    behind it wait with it (order per sender), until a later receive opens it.
    ``recv --follow`` and the daemon retry with backoff; ``recv`` exits 1."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"a received message cannot be opened yet ({reason}); it stays "
                         "queued at your home node and the next receive tries it again")


class SendUnknown(NoAnswer):
    """A message (``send``, ``group_send``) left but the relay's answer never came: it may
    or may not have been delivered. Retrying with the same ``msg_id`` is safe: the
    recipient's home stores a message id once and devices show it once.

    Attributes:
        msg_id: the 16-byte message id to retry with (``wa-cli send --retry HEX``).
    """

    def __init__(self, msg_id: bytes, reason: str) -> None:
        super().__init__(
            f"message {msg_id.hex()} may or may not have been delivered: {reason}. It is "
            f"safe to retry with the same message id (it is shown once): "
            f"wa-cli send --retry {msg_id.hex()}")
        self.msg_id = msg_id


class RelayError(ClientError):
    """The relay answered a request with an ``error`` frame.

    The message names the limit (``quota``) and when to retry (``retry_after_ms``)
    where the relay sent them (``rate_limited``, ``quota_exceeded``).

    Attributes:
        code: the wire error code (``relay.protocol.ErrorCode`` value, unknown codes kept as is).
        frame: the whole ``Error`` frame (``url``, ``user_id``, ``device_list`` where sent).
        quota: the limit that refused, or ``None``.
        retry_after_ms: milliseconds after which a retry may succeed, or ``None``.
    """

    def __init__(self, frame: Error) -> None:
        detail = f": {frame.message}" if frame.message else ""
        extra = ""
        if frame.quota:
            extra += f"; limit {frame.quota}"
        if frame.retry_after_ms is not None and "retry in" not in (frame.message or ""):
            # a rate_limited message says when already ("...; retry in 6.5 s")
            extra += f"; retry in {_seconds(frame.retry_after_ms)}"
        super().__init__(f"relay refused the request ({frame.code}{detail}{extra})")
        self.code = frame.code
        self.frame = frame
        self.quota = frame.quota
        self.retry_after_ms = frame.retry_after_ms


class PartialSend(RelayError):
    """Some recipients' homes stored a message, the others' refused it (an ``error``
    with ``refused_users``). Exit 1: the send is not complete. ``wa-cli send --retry
    MSG_ID`` sends it again, under the same id, to the refused users only.

    Attributes:
        msg_id: the 16-byte message id.
        refused_users: the user ids whose homes refused.
    """

    def __init__(self, frame: Error, msg_id: bytes, names: list[str]) -> None:
        super().__init__(frame)
        self.msg_id = msg_id
        self.refused_users = list(frame.refused_users or ())
        self.args = (
            f"message {msg_id.hex()} was stored for the other recipients but refused for "
            f"{', '.join(names)} ({frame.code}: their home did not store it); once it has "
            f"room, 'wa-cli send --retry {msg_id.hex()}' sends it to them (shown once)",)


def _seconds(ms: int) -> str:
    """``ms`` as a short human duration: ``250 ms``, ``1.5 s``, ``2 min``."""
    if ms < 1000:
        return f"{ms} ms"
    if ms < 120_000:
        return f"{ms / 1000:.3g} s"
    return f"{ms / 60_000:.3g} min"


class SendFailed(ClientError):
    """A message could not be encrypted for, or delivered to, its recipient's devices."""


class NotPrimary(ClientError):
    """The operation needs the account key, which only the primary device holds."""


class LinkFailed(ClientError):
    """Linking a device did not complete (wrong, used or expired code, mismatch, timeout,
    or material that does not verify). The message says whether anything changed.

    Attributes:
        reason: the ``--json`` error code (and daemon ``data.reason``) when the failure
            has its own: ``link_code_used`` (the code served an approval already),
            ``link_declined`` (the primary declined this device); else ``None``
            (``failed``).
    """

    def __init__(self, message: str, *, reason: str | None = None) -> None:
        super().__init__(message)
        self.reason = reason


class DeviceRemoved(ClientError):
    """This device is no longer in its account's device list (it was removed)."""
