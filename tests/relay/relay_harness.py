"""Harness for in-process relay node tests: clusters on 127.0.0.1, devices, raw clients."""

from __future__ import annotations

import base64
import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import nacl.signing
import vodozemac
from trio_websocket import WebSocketConnection

from relay.config import NodeConfig
from relay.federation import open_link_websocket
from relay.protocol import (
    SUPPORTED_VERSIONS,
    Device,
    DeviceList,
    auth_message,
    peer_auth_message,
    read_frame,
    sign_device_list,
    user_id_from_key,
    write_frame,
)
from relay.protocol.frames import (
    Auth,
    AuthOk,
    Challenge,
    Copy,
    Deliver,
    DeliverItem,
    Frame,
    Hello,
    OneTimeKey,
    PeerAuth,
    PeerAuthOk,
    PutDevices,
    Recipient,
    SignedDeviceList,
)
from relay.ring import Ring
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


class RawClient:
    """A WebSocket speaking raw frames; pushes (id 0) are kept apart from answers."""

    def __init__(self, ws: WebSocketConnection) -> None:
        self.ws = ws
        self._next = 1
        self.challenge: Challenge | None = None

    def next_id(self) -> int:
        self._next += 1
        return self._next

    async def send(self, frame: Frame) -> None:
        await self.ws.send_message(write_frame(frame))

    async def recv(self) -> Frame:
        return read_frame(await self.ws.get_message())

    async def request(self, frame: Frame) -> Frame:
        """Send a request and return the answer with its id (skipping pushes)."""
        await self.send(frame)
        while True:
            answer = await self.recv()
            if answer.id == frame.id:
                return answer

    async def hello(self, role: str = "client") -> Challenge:
        ch = await self.request(Hello(id=1, versions=list(SUPPORTED_VERSIONS), role=role, agent="test"))
        assert isinstance(ch, Challenge), ch
        self.challenge = ch
        return ch

    async def auth(self, device: UserDevice) -> Frame:
        assert self.challenge is not None
        msg = auth_message(self.challenge.nonce, self.challenge.node_id, device.user_id,
                           device.device_id)
        return await self.request(Auth(id=self.next_id(), user_id=device.user_id,
                                       device_id=device.device_id, signature=device.sign(msg)))


@asynccontextmanager
async def connect(url: str) -> AsyncIterator[RawClient]:
    async with open_link_websocket(url, max_message_size=4 * 1024 * 1024) as ws:
        yield RawClient(ws)


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
    cfg = cluster.config(from_id)
    async with connect(cluster.url(to_id)) as c:
        ch = await c.hello(role="peer")
        sig = cfg.signing_key.sign(
            peer_auth_message(ch.nonce, from_id, to_id, cluster.ring.version)).signature
        ok = await c.request(PeerAuth(id=2, node_id=from_id, signature=sig, nonce=os.urandom(32)))
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
