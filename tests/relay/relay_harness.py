"""Harness for in-process relay node tests: clusters on 127.0.0.1, devices, raw clients."""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import nacl.signing
import trio
import vodozemac
from trio_websocket import WebSocketConnection

from relay.config import NodeConfig
from relay.config.ring import Ring
from relay.net import KeepaliveConfig, Link, LinkSettings, open_link
from relay.protocol import (
    DEFAULT_LIMITS,
    Device,
    DeviceList,
    Limits,
    sign_device_list,
    user_id_from_key,
)
from relay.protocol.frames import (
    AuthOk,
    Challenge,
    Copy,
    Deliver,
    DeliverItem,
    Frame,
    OneTimeKey,
    PeerAuthOk,
    PutDevices,
    Recipient,
    SignedDeviceList,
)
from relay.protocol.handshake import Handshake, HandshakeRefused
from relay.testing import LocalCluster, node_configs
from relay.testing import free_ports as free_ports  # re-exported for older tests


def make_configs(n: int, **overrides) -> list[NodeConfig]:
    """Configs of an ``n``-node cluster on free loopback ports with memory storage."""
    return node_configs(n, **overrides)


@dataclass
class UserDevice:
    """A user with one device: pynacl account key + vodozemac device account."""

    account_key: nacl.signing.SigningKey = field(default_factory=nacl.signing.SigningKey.generate)
    olm: vodozemac.Account = field(default_factory=vodozemac.Account)
    device_id: int = 0
    version: int = 1

    @property
    def user_id(self) -> str:
        return user_id_from_key(bytes(self.account_key.verify_key))

    @property
    def ed25519(self) -> bytes:
        return _b64(self.olm.ed25519_key.to_base64())

    def device_list(self, version: int | None = None, extra_devices: int = 0) -> SignedDeviceList:
        devices = [Device(self.device_id, self.ed25519, self.olm.curve25519_key.to_bytes(), "t", 1)]
        devices += [Device(100 + i, os.urandom(32), os.urandom(32), "x", 1) for i in range(extra_devices)]
        dl = DeviceList(self.user_id, version or self.version, tuple(devices), int(time.time()))
        return sign_device_list(self.account_key, dl)

    def sign(self, message: bytes) -> bytes:
        return _b64(self.olm.sign(message).to_base64())

    def one_time_keys(self, n: int) -> list[OneTimeKey]:
        self.olm.generate_one_time_keys(n)
        keys = [OneTimeKey(k, v.to_bytes()) for k, v in self.olm.one_time_keys.items()]
        self.olm.mark_keys_as_published()
        return keys

    def recipient(self, body: bytes = b"ciphertext", version: int = 1) -> Recipient:
        return Recipient(self.user_id, version, [Copy(self.device_id, body)])

    def companion(self, device_id: int) -> UserDevice:
        """Another device of the same account (fresh device keys)."""
        return UserDevice(account_key=self.account_key, device_id=device_id)

    def entry(self) -> Device:
        """This device's entry in a device list."""
        return Device(self.device_id, self.ed25519, self.olm.curve25519_key.to_bytes(),
                      f"dev{self.device_id}", 1)


def list_of(devices: list[UserDevice], version: int) -> SignedDeviceList:
    """A list of several devices of one account, signed by ``devices[0]``'s account key."""
    first = devices[0]
    dl = DeviceList(first.user_id, version, tuple(d.entry() for d in devices), int(time.time()))
    return sign_device_list(first.account_key, dl)


def _b64(s: str) -> bytes:
    return base64.b64decode(s + "=" * (-len(s) % 4))


RAW_SETTINGS = LinkSettings(raw=True, keepalive=KeepaliveConfig(interval=0),
                            request_timeout=None, max_message=4 * 1024 * 1024,
                            connect_timeout=10.0)
"""A raw link: every frame handed over in order, ids as the test chooses, no keepalive."""


class RawClient:
    """Raw frames over a :mod:`relay.net` link in raw mode: :meth:`recv` returns every
    frame in the order the node sent it (answers and pushes alike), :meth:`send` keeps
    the test's ids. The handshake frames and their checks come from the sans-I/O
    :class:`relay.protocol.handshake.Handshake` (the one handshake implementation).

    Attributes:
        link: the :class:`relay.net.Link` (``link.socket.ws.send_message`` writes raw
            bytes; ``link.close_code`` once the node closed).
        challenge: the node's challenge after :meth:`hello`.
    """

    def __init__(self, link: Link) -> None:
        self.link = link
        self._next = 1
        self.challenge: Challenge | None = None
        self.handshake: Handshake | None = None

    @property
    def ws(self) -> WebSocketConnection:
        """The WebSocket, to write raw bytes (never read from it: the link's reader does)."""
        return self.link.socket.ws

    @property
    def close_code(self) -> int | None:
        """The WebSocket close code once the node closed the connection."""
        return self.link.close_code

    def next_id(self) -> int:
        self._next += 1
        return self._next

    async def send(self, frame: Frame) -> None:
        await self.link.send(frame)

    async def recv(self) -> Frame:
        """The next frame from the node.

        Raises:
            relay.net.ConnectionLost: the connection closed (see :attr:`close_code`).
        """
        try:
            return await self.link.pushes.receive()
        except trio.EndOfChannel:
            raise self.link.lost() from None

    async def request(self, frame: Frame) -> Frame:
        """Send a request and return the answer with its id (skipping pushes)."""
        await self.send(frame)
        while True:
            answer = await self.recv()
            if answer.id == frame.id:
                return answer

    async def hello(self, role: str = "client", handshake: Handshake | None = None) -> Challenge:
        """``hello`` (id 1) and the checked challenge; ``handshake`` for a peer role."""
        hs = handshake if handshake is not None else Handshake(role, "test")
        answer = await self.request(dataclasses.replace(hs.hello(), id=1))
        self.challenge = hs.receive_challenge(answer)
        self.handshake = hs
        return self.challenge

    async def auth(self, device: UserDevice) -> Frame:
        """``auth`` of ``device``; returns the answer (``auth_ok`` or ``error``)."""
        assert self.handshake is not None
        frame = self.handshake.auth(device.user_id, device.device_id, device.sign)
        answer = await self.request(dataclasses.replace(frame, id=self.next_id()))
        with contextlib.suppress(HandshakeRefused):  # the test looks at the error itself
            self.handshake.receive_auth_ok(answer)
        return answer

    async def peer_auth(self, node_id: str, signing_key: nacl.signing.SigningKey) -> Frame:
        """``peer_auth`` as node ``node_id``; returns the answer (``peer_auth_ok``, its
        signature verified, or ``error``)."""
        assert self.handshake is not None
        frame = self.handshake.peer_auth(node_id, lambda m: signing_key.sign(m).signature,
                                         os.urandom(32))
        answer = await self.request(dataclasses.replace(frame, id=self.next_id()))
        with contextlib.suppress(HandshakeRefused):
            self.handshake.receive_peer_auth_ok(answer)
        return answer


def peer_handshake(cluster: Cluster, from_id: str, to_id: str) -> Handshake:
    """The handshake of node ``from_id`` dialling node ``to_id`` of ``cluster``."""
    peer = cluster.ring.node(to_id)
    assert peer is not None
    return Handshake("peer", f"test/{from_id}", expect_node_id=to_id,
                     ring_version=cluster.ring.version, peer_key=peer.public_key)


@asynccontextmanager
async def connect(url: str, *, local_address: str | None = None,
                  limits: Limits = DEFAULT_LIMITS) -> AsyncIterator[RawClient]:
    """A raw client connection (nothing sent yet); ``limits`` decode what the node sends.

    Raises:
        relay.net.ConnectFailed: refused (``http_status`` 503 at admission), unreachable.
    """
    async with open_link(url, settings=RAW_SETTINGS, local_address=local_address,
                         limits=limits) as link:
        yield RawClient(link)


@asynccontextmanager
async def session(url: str, device: UserDevice) -> AsyncIterator[RawClient]:
    """An authenticated client connection for ``device`` (its list must be published)."""
    async with connect(url) as c:
        await c.hello()
        ok = await c.auth(device)
        assert isinstance(ok, AuthOk), ok
        yield c


@asynccontextmanager
async def peer_session(cluster: Cluster, from_id: str, to_id: str) -> AsyncIterator[RawClient]:
    """A raw connection to node ``to_id`` authenticated as peer node ``from_id``."""
    async with connect(cluster.url(to_id), limits=DEFAULT_LIMITS.for_peers()) as c:
        await c.hello(handshake=peer_handshake(cluster, from_id, to_id))
        ok = await c.peer_auth(from_id, cluster.config(from_id).signing_key)
        assert isinstance(ok, PeerAuthOk), ok
        yield c


async def publish(url: str, device: UserDevice, version: int | None = None) -> Frame:
    """put_devices without a session; returns the answer."""
    return await publish_list(url, device.device_list(version))


async def publish_list(url: str, signed: SignedDeviceList) -> Frame:
    """put_devices of ``signed`` without a session; returns the answer (id 2)."""
    async with connect(url) as c:
        await c.hello()
        return await c.request(PutDevices(id=2, device_list=signed))


async def published(cluster: Cluster, *homes: str) -> list[UserDevice]:
    """One fresh device homed at each node of ``homes`` (ids, in order), each list
    published at its home."""
    devices = [device_homed_at(cluster.ring, home) for home in homes]
    for device, home in zip(devices, homes, strict=True):
        await publish(cluster.url(home), device)
    return devices


async def deliveries(client: RawClient, n: int) -> list[DeliverItem]:
    """Receive until ``n`` delivered envelopes arrived (``deliver`` frames carry one or
    more); other frames (synced, answers) are skipped."""
    got: list[DeliverItem] = []
    while len(got) < n:
        frame = await client.recv()
        if isinstance(frame, Deliver):
            got.extend(frame.items)
    return got


def device_homed_at(ring: Ring, node_id: str) -> UserDevice:
    """A fresh device whose user is homed at ``node_id``."""
    while True:
        d = UserDevice()
        if ring.home(d.user_id).id == node_id:
            return d


Cluster = LocalCluster
"""``Cluster(nursery, make_configs(n))``: nodes run in-process; start/stop each one
independently; ``storages[node_id]`` survives restarts (see :class:`relay.testing.LocalCluster`)."""
