"""The wire-protocol side of the relay load generator (:mod:`bench.relay_load`), in one
place so that a protocol change (batched ``deliver``, batched acks) touches only
this module.

It speaks the real protocol of :mod:`relay.protocol` (``read_frame``/``write_frame``)
over trio-websocket with real accounts: an Ed25519 account key, a device key, a
signed one-device list published with ``put_devices`` and the ``hello`` ->
``challenge`` -> ``auth`` handshake. Message bodies are opaque pre-built bytes (no
Olm): the generator measures the relay, not the client.

The generator sees the node's frames as a few :class:`Event` kinds: an answer to
a request (matched by request id), a delivered envelope, or something else.
"""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace

import nacl.signing
from trio_websocket import WebSocketConnection, open_websocket_url

from bench.lean_ws import LeanWebSocket, open_lean_websocket
from relay.protocol import (
    Device,
    DeviceList,
    read_frame,
    sign_device_list,
    user_id_from_key,
    write_frame,
)
from relay.protocol.codec import decode
from relay.protocol.errors import ProtocolError
from relay.protocol.frames import (
    Ack,
    Copy,
    Deliver,
    Error,
    Ok,
    Ping,
    PutDevices,
    Recipient,
    Send,
    Sent,
    Sync,
    Synced,
)
from relay.protocol.handshake import Handshake

TRANSPORTS = ("trio-websocket", "lean")  # the generator's WebSocket client (--transport)
DEFAULT_TRANSPORT = "trio-websocket"  # the figures of every session so far (docs/benchmarks.md, "Session 9")
RECEIVE_BUFFER = 64 * 1024  # bytes, as the node and wa-cli use
MAX_MESSAGE = 4 * 1024 * 1024  # bytes, largest WebSocket message accepted
FIRST_REQUEST_ID = 10  # request ids below this are the handshake's


class WireError(RuntimeError):
    """The node answered the handshake or a set-up request with something unexpected."""


@dataclass
class Account:
    """A user with one device (device id 0): account key and device key, both Ed25519.

    The device's Curve25519 key is random bytes: nothing is ever encrypted to it.
    """

    account_key: nacl.signing.SigningKey = field(default_factory=nacl.signing.SigningKey.generate)
    device_key: nacl.signing.SigningKey = field(default_factory=nacl.signing.SigningKey.generate)
    device_id: int = 0
    list_version: int = 1

    @property
    def user_id(self) -> str:
        """The self-certifying user id (base32 of the account public key)."""
        return user_id_from_key(bytes(self.account_key.verify_key))

    def signed_list(self) -> bytes:
        """The ``put_devices`` frame publishing this account's one-device list."""
        device = Device(self.device_id, bytes(self.device_key.verify_key), os.urandom(32),
                        "bench", int(time.time()))
        dl = DeviceList(self.user_id, self.list_version, (device,), int(time.time()))
        return write_frame(PutDevices(id=2, device_list=sign_device_list(self.account_key, dl)))


@dataclass(frozen=True, slots=True)
class Event:
    """One frame from the node, as the generator needs it.

    Attributes:
        kind: ``"answer"`` (to request ``request_id``; ``ok`` tells success and
            ``status`` is the ``sent`` status, the error code, or ``""``),
            ``"deliver"`` (envelope ``msg_id`` at queue ``seq``), ``"synced"``
            or ``"other"`` (any other push).
    """

    kind: str
    request_id: int = 0
    ok: bool = False
    status: str = ""
    seq: int = 0
    msg_id: bytes = b""


def events(data: bytes | str) -> list[Event]:
    """The events one WebSocket message from the node carries (a ``deliver`` frame
    carries one per envelope; every other frame exactly one).

    The hot path reads the decoded map (:func:`relay.protocol.codec.decode`, with
    the protocol's limits) without building frame objects; anything but
    ``deliver``, ``synced``, ``sent`` and ``error`` goes through :func:`read_frame`.

    Raises:
        RemoteProtocolError: the message is not a valid frame.
    """
    m = decode(data)
    t, request_id = m.get("t"), m.get("id")
    if t == Deliver.TYPE:  # version 2: one frame carries several envelopes
        return [Event("deliver", seq=item["seq"], msg_id=item["envelope"]["msg_id"])
                for item in m["items"]]
    if t == Synced.TYPE:
        return [Event("synced")]
    if request_id == 0:
        return [Event("other")]
    if t == Sent.TYPE:
        return [Event("answer", request_id, ok=True, status=m["status"])]
    if t == Error.TYPE:
        return [Event("answer", request_id, ok=False, status=m["code"])]
    frame = read_frame(data)
    return [Event("answer", frame.id, ok=isinstance(frame, Ok), status=frame.TYPE)]


def send_frame(request_id: int, msg_id: bytes, to: str, body: bytes) -> bytes:
    """A ``send`` of ``body`` to device 0 (list version 1) of user ``to``."""
    return write_frame(Send(id=request_id, msg_id=msg_id,
                            recipients=[Recipient(to, 1, [Copy(0, body)])]))


def sync_frame(request_id: int) -> bytes:
    """The ``sync`` request starting delivery of the device's queue."""
    return write_frame(Sync(id=request_id))


def ack_frame(seq: int) -> bytes:
    """A cumulative acknowledgement of everything delivered up to ``seq``."""
    return write_frame(Ack(id=0, seq=seq))


def ping_frame(request_id: int) -> bytes:
    """A ``ping``; the node answers it after the requests sent before it."""
    return write_frame(Ping(id=request_id))


def is_ping_answer(event: Event) -> bool:
    """True for the answer to a :func:`ping_frame` (``ok``)."""
    return event.kind == "answer" and event.ok and event.status == Ok.TYPE


@asynccontextmanager
async def open_ws(url: str, transport: str = DEFAULT_TRANSPORT,
                  ) -> AsyncIterator[WebSocketConnection | LeanWebSocket]:
    """A WebSocket to ``url``: ``"trio-websocket"`` (as ``wa-cli`` connects, with the
    relay's transport settings; the default) or ``"lean"`` (:mod:`bench.lean_ws`,
    ``ws://`` only: the generator's own cost kept low; a ``wss://`` URL falls back to
    trio-websocket)."""
    if transport == "lean" and url.startswith("ws://"):
        async with open_lean_websocket(url, MAX_MESSAGE) as ws:
            yield ws
        return
    async with open_websocket_url(url, receive_buffer_size=RECEIVE_BUFFER,
                                  max_message_size=MAX_MESSAGE) as ws:
        yield ws


async def _request(ws: WebSocketConnection | LeanWebSocket, data: bytes, request_id: int):
    await ws.send_message(data)
    while True:
        frame = read_frame(await ws.get_message())
        if frame.id == request_id:
            return frame


async def _hello(ws: WebSocketConnection | LeanWebSocket) -> Handshake:
    """``hello`` and the checked ``challenge``, by the one sans-I/O handshake
    (:class:`relay.protocol.handshake.Handshake`)."""
    hs = Handshake("client", "wa-relay bench")
    answer = await _request(ws, write_frame(replace(hs.hello(), id=1)), 1)
    try:
        hs.receive_challenge(answer)
    except ProtocolError as exc:
        raise WireError(f"hello answered {answer!r}: {exc}") from exc
    return hs


async def publish(url: str, account: Account) -> None:
    """Publish ``account``'s device list at ``url`` (its home node).

    Raises:
        WireError: the node did not answer ``ok``.
    """
    async with open_ws(url) as ws:
        await _hello(ws)
        answer = await _request(ws, account.signed_list(), 2)
        if not isinstance(answer, Ok):
            raise WireError(f"put_devices answered {answer!r}")


@asynccontextmanager
async def session(url: str, account: Account, transport: str = DEFAULT_TRANSPORT,
                  ) -> AsyncIterator[WebSocketConnection | LeanWebSocket]:
    """An authenticated connection of ``account``'s device to its home ``url`` over
    ``transport`` (see :func:`open_ws`).

    Requests on it use ids from :data:`FIRST_REQUEST_ID` up.

    Raises:
        WireError: the handshake failed.
    """
    async with open_ws(url, transport) as ws:
        hs = await _hello(ws)
        auth = hs.auth(account.user_id, account.device_id,
                       lambda message: account.device_key.sign(message).signature)
        answer = await _request(ws, write_frame(replace(auth, id=2)), 2)
        try:
            hs.receive_auth_ok(answer)
        except ProtocolError as exc:
            raise WireError(f"auth answered {answer!r}: {exc}") from exc
        yield ws
