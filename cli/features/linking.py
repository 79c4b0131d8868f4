"""Linking a companion device, new-device side (docs/protocol.md, "Linking a companion device").

Usage (one trio program can add a device to an account whose primary it also runs)::

    with new_home(home) as fresh:
        async with open_link(relay_url, "laptop") as pending:
            print(pending.code)                      # shown to the user / scanned as QR
            linked = await pending.wait()            # caller bounds it (fail_after)
        state = save_linked(fresh, linked, relay_url)
        async with open_client(state):               # uploads one-time keys: the primary
            pass                                     # waits for them (the confirmation)

or simply ``await link_device(primary_client, home, "laptop")``.

The new device makes its vodozemac account and an ephemeral X25519 key, opens a
mailbox with ``link_open`` on any node (a :mod:`relay.net` client link: ``hello``,
``challenge``, then ``link_open`` without ``auth``; keepalive pings watch it while
it waits), and waits on that connection for ``link_data``. The answer must open with the ephemeral key, carry a proof keyed
by the code's secret (so only whoever read the code could have made it), and a
device list signed by the account key (``user_id``) that holds this device's
keys at the assigned ``device_id``; otherwise nothing is saved.
"""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import nacl.public
import trio

import relay.net as net
from cli.errors import ConnectionFailed, LinkFailed, RelayError
from cli.features import devices, linkcode, wordcode
from cli.features.linkcode import DeviceInfo, LinkCode, LinkCodeError, Material
from cli.features.wordcode import Pake, WordCode
from cli.session import crypto
from cli.session.connection import AGENT, CLIENT_SETTINGS
from cli.session.group_state import GroupStateRejected, SignedGroupState
from cli.session.session import Session, open_session
from cli.session.state import NewHome, State, new_home, seen_key
from relay.protocol import DeviceList, RemoteProtocolError
from relay.protocol.cluster import PinnedCluster
from relay.protocol.frames import Error, LinkData, LinkOpen, LinkOpened, LinkReply
from relay.protocol.identity import verify_device_list

__all__ = [
    "LinkedAccount", "PendingLink", "adopt_groups", "complete_link", "link_device", "link_devices", "open_link", "save_linked",
]

log = logging.getLogger(__name__)

DECLINED_MESSAGE = ("declined on the other device: its user answered no to linking this "
                    "device; nothing was saved. Run 'wa-cli link --short' again for a new code")


@dataclass
class LinkedAccount:
    """A verified linking answer: the device's own keys plus the account material.

    Attributes:
        identity: this device's vodozemac account (private keys; never sent).
        material: what the primary sent (contacts, history, group states, display name;
            ``material.history_omitted`` older messages did not fit).
        device_list: the verified signed list that holds this device.
    """

    identity: crypto.DeviceIdentity
    material: Material
    device_list: DeviceList

    @property
    def user_id(self) -> str:
        """The account this device joined."""
        return self.material.user_id

    @property
    def device_id(self) -> int:
        """This device's id in the account's list."""
        return self.material.device_id


class PendingLink:
    """An open provisioning mailbox; create with :func:`open_link`.

    Attributes:
        code: the linking code to show (``wa1-...``).
        node_id, mailbox_id: where the mailbox lives.
        expires_in: seconds the node keeps the mailbox (from ``link_opened``).
        fingerprint: this device's key fingerprint (the primary shows the same).
        device_name: the label announced in ``device_info``.
    """

    def __init__(self, link: net.Link | None, identity: crypto.DeviceIdentity,
                 ephemeral: nacl.public.PrivateKey, info: DeviceInfo, secret: bytes,
                 opened: LinkOpened, pake: tuple[tuple[str, ...], Pake] | None = None) -> None:
        self._link = link
        self._identity = identity
        self._ephemeral = ephemeral
        self._secret = secret
        self._info = info
        self._pake = pake
        self._keys: tuple[bytes, bytes] | None = None  # PAKE session keys, once derived
        self.node_id = opened.node_id
        self.mailbox_id = opened.mailbox_id
        self.expires_in = opened.expires_in
        self.fingerprint = info.fingerprint
        self.device_name = info.name
        self.code = (WordCode(opened.node_id, opened.mailbox_id, pake[0]).encode()
                     if pake is not None else
                     LinkCode(opened.node_id, opened.mailbox_id,
                              linkcode.info_digest(info.encode()), secret).encode())

    async def _pake_step(self, body: bytes) -> None:
        """A word-code link: the primary's SPAKE2 message came; derive the keys and post
        this device's info under them (``link_reply``)."""
        assert self._pake is not None and self._link is not None
        try:
            self._keys = self._pake[1].finish(body)
        except LinkCodeError as exc:
            raise LinkFailed(f"unusable linking answer: {exc}; not linked") from exc
        reply = wordcode.seal_box(self._keys[0], self._info.encode())
        try:
            answer = await self._link.request(LinkReply(id=0, body=reply),
                                              timeout=self._link.settings.connect_timeout)
        except (net.RequestTimeout, net.ConnectionLost) as exc:
            raise LinkFailed(f"lost the relay while linking ({exc}); nothing was saved. Run "
                             "'wa-cli link' again") from exc
        if isinstance(answer, Error):
            raise LinkFailed(f"the relay refused this device's answer ({answer.code}: "
                             f"{answer.message}); nothing was saved")

    async def wait(self) -> LinkedAccount:
        """Wait for the primary's answer and verify it. The caller bounds the wait.

        Raises:
            LinkFailed: the relay closed the mailbox (expired) or sent an error, the
                answer does not verify, or (a word code) the primary declined this
                device (``reason`` ``link_declined``); nothing is saved in any case.
        """
        assert self._link is not None
        while True:
            try:
                frame = await self._link.pushes.receive()
            except (trio.EndOfChannel, trio.ClosedResourceError):
                if self._link.close_code is None:  # we gave up on it (keepalive overdue)
                    raise LinkFailed(
                        f"lost the connection to the relay while waiting for approval "
                        f"({self._link.close_reason}); nothing was saved. Run 'wa-cli link' "
                        "again") from None
                raise LinkFailed(
                    f"the relay closed the linking mailbox ({self._link.close_reason}); the "
                    "code has expired or was used. Run 'wa-cli link' again") from None
            if isinstance(frame, LinkData) and self._pake is not None and self._keys is None:
                await self._pake_step(frame.body)
                continue
            if isinstance(frame, LinkData):
                return self._verify(frame.body)
            if isinstance(frame, Error) and frame.code == "not_found":
                raise LinkFailed("the linking code expired before it was approved; nothing "
                                 "was saved. Run 'wa-cli link' again")
            if isinstance(frame, Error):
                raise LinkFailed(f"the relay ended the link ({frame.code}: {frame.message})")

    def _verify(self, body: bytes) -> LinkedAccount:
        """Open and check the primary's answer (a word code's answer may be its decline).

        Raises:
            LinkFailed: it does not open or verify; ``reason`` ``link_declined``: the
                primary's user declined this device (authentic: under the PAKE key).
        """
        try:
            plain = (wordcode.open_box(self._keys[1], body) if self._keys is not None
                     else linkcode.unseal(self._ephemeral, body))
            if self._keys is not None and plain == wordcode.DECLINED:
                raise LinkFailed(DECLINED_MESSAGE, reason="link_declined")
            material = Material.decode(plain)
        except LinkCodeError as exc:
            raise LinkFailed(f"unusable linking answer: {exc}; not linked") from exc
        if self._keys is None and not linkcode.proof_ok(self._secret, material):
            raise LinkFailed("the linking answer was not made by a device that read this "
                             "code (relay tampering?); not linked")
        try:
            dl = verify_device_list(material.device_list, material.user_id)
        except RemoteProtocolError as exc:
            raise LinkFailed(f"the account's device list does not verify ({exc.message}); "
                             "not linked") from exc
        me = dl.device(material.device_id)
        if (me is None or me.ed25519 != self._identity.ed25519
                or me.curve25519 != self._identity.curve25519):
            raise LinkFailed("the signed device list does not hold this device's keys; not linked")
        return LinkedAccount(self._identity, material, dl)


async def _open_mailbox(link: net.Link, blob: bytes, *, short: bool = False) -> LinkOpened:
    limit = link.settings.connect_timeout
    try:
        opened = await link.request(LinkOpen(id=0, device_info=blob, short=short or None),
                                    timeout=limit)
    except net.RequestTimeout as exc:
        raise ConnectionFailed(f"the relay did not open a mailbox within {limit:g}s") from exc
    except net.ConnectionLost as exc:
        raise ConnectionFailed(f"{exc} before the mailbox opened") from exc
    if isinstance(opened, Error):
        raise RelayError(opened)
    if not isinstance(opened, LinkOpened):
        raise ConnectionFailed(f"unexpected answer to link_open: {opened.TYPE}")
    return opened


@asynccontextmanager
async def open_link(
    relay_url: str, device_name: str, *, identity: crypto.DeviceIdentity | None = None,
    connect_timeout: float = 10.0, settings: net.LinkSettings = CLIENT_SETTINGS,
    short: bool = False,
) -> AsyncIterator[PendingLink]:
    """Create device keys, open a mailbox on ``relay_url`` and yield the :class:`PendingLink`.

    With ``short``, the code is a word code (:mod:`cli.features.wordcode`): the mailbox
    carries this device's SPAKE2 message, and its keys and name go to the primary only
    under the PAKE key, once the primary answered (see :meth:`PendingLink.wait`).

    The connection (and so the mailbox) stays open until the block exits.

    Args:
        relay_url: any node (``ws://host:port``).
        device_name: this device's label in the account's list (at most 100 characters).
        identity: device keys to use (new ones by default).
        connect_timeout: seconds to connect, and again to open the mailbox.
        settings: keepalive and buffers of the link (:func:`cli.connection.client_settings`).

    Raises:
        ConnectionFailed: unreachable or bad answers.
        RelayError: the node refused ``link_open``.
    """
    identity = identity if identity is not None else crypto.DeviceIdentity()
    ephemeral = nacl.public.PrivateKey.generate()
    info = DeviceInfo(identity.ed25519, identity.curve25519, bytes(ephemeral.public_key),
                      device_name[:linkcode.MAX_DEVICE_NAME])
    secret = os.urandom(linkcode.SECRET_LEN)

    settings = replace(settings, connect_timeout=connect_timeout)
    async with AsyncExitStack() as stack:
        try:
            link = await stack.enter_async_context(
                net.open_client_connection(relay_url, agent=AGENT, settings=settings))
        except net.Refused as exc:
            raise RelayError(exc.frame) from exc
        except net.ConnectFailed as exc:
            raise ConnectionFailed(str(exc)) from exc
        pake = None
        blob = info.encode()
        if short:
            words = wordcode.new_words()
            pake = (words, Pake(words, primary=False))
            blob = wordcode.pake_info(pake[1].message)
        opened = await _open_mailbox(link, blob, short=short)
        yield PendingLink(link, identity, ephemeral, info, secret, opened, pake)


def adopt_groups(state: State, signed: list[SignedGroupState]) -> int:
    """Adopt the group states the primary sent: each is verified (account signature of
    an admin, shape) and becomes the root of that group's chain on this device
    (:meth:`cli.groups.GroupStore.apply` with no sender: the account's own primary is
    trusted, the link being authenticated). A state that fails is skipped with a warning.
    No Megolm keys come with them: this device gets the senders' keys as they share
    them from now on, and makes its own outbound session on its first send.

    Returns:
        How many group states were adopted.
    """
    adopted = 0
    for group in signed:
        try:
            if state.groups.apply([group], sender=None, me=state.user_id) is not None:
                adopted += 1
        except GroupStateRejected as exc:
            log.warning("skipping a group state from the linking material: %s", exc)
    return adopted


def save_linked(fresh: NewHome, linked: LinkedAccount, relay_url: str) -> State:
    """Write the new device's state into a locked empty home: identity, account list,
    contacts, verified group states (:func:`adopt_groups`) and imported history
    (marked seen), plus one-time and fallback keys to upload on the first
    connection. Returns the saved :class:`State`."""
    m = linked.material
    state = fresh.create(user_id=m.user_id, device_id=m.device_id, name=m.name,
                         relay_url=relay_url, identity=linked.identity)
    state.remember_device_list(m.device_list, m.user_id)
    if m.cluster is not None:  # the primary's pin: authentic as the proof-checked material
        try:
            state.cluster = PinnedCluster.verify(m.cluster, m.cluster.cluster_key)
        except RemoteProtocolError as exc:
            log.warning("ignoring the primary's cluster description: %s", exc)
    state.published_version = linked.device_list.version  # the primary published it
    state.contacts.update(m.contacts)
    adopt_groups(state, m.groups)
    for entry in m.history:
        state.history.append({**entry, "resends": 0})
        state.mark_seen(seen_key(entry["from"], bytes.fromhex(entry["id"])))
    state.identity.generate_one_time_keys(crypto.ONE_TIME_KEYS_TARGET)
    state.identity.generate_fallback_key()
    state.save()
    return state


async def link_device(
    approver: Session, home: str | os.PathLike, device_name: str, *, history: bool = True,
    relay_url: str | None = None,
) -> LinkedAccount:
    """Add a device to ``approver``'s account in one program: open a mailbox, approve it
    with the primary's client, save the new device's state in ``home`` and publish its
    one-time keys. ``open_state(home)`` opens the new device afterwards.

    Args:
        approver: a connected client of the account's primary device.
        home: an empty directory for the new device.
        relay_url: where to open the mailbox (default: the approver's home node).

    The caller bounds the whole link (``trio.fail_after``).

    Raises:
        LinkFailed, ConnectionFailed, RelayError, AlreadyInitialized.
    """
    url = relay_url or approver.url
    result: list[LinkedAccount] = []
    with new_home(Path(home)) as fresh:
        async with open_link(url, device_name) as pending:

            async def new_device() -> None:
                result.append(await complete_link(pending, fresh, url))

            async with trio.open_nursery() as nursery:
                nursery.start_soon(new_device)
                await devices.approve_link(approver, pending.code, history=history)
    return result[0]


async def complete_link(pending: PendingLink, fresh: NewHome, relay_url: str) -> LinkedAccount:
    """The new device's side of a link, to run concurrently with the primary's
    :func:`cli.features.devices.approve_link` (which returns only once this device
    reached its home): wait for the material, save it in ``fresh`` (off the event
    loop: it fsyncs) and connect once, which uploads the keys that confirm the link.

    Raises:
        LinkFailed, ConnectionFailed, RelayError (as :meth:`PendingLink.wait` and
        :func:`cli.session.session.open_session`).
    """
    linked = await pending.wait()
    state = await trio.to_thread.run_sync(save_linked, fresh, linked, relay_url)
    async with open_session(state):
        pass  # authenticates and uploads the one-time keys: the confirmation
    return linked


async def link_devices(
    approver: Session, root: str | os.PathLike, count: int, *, name_prefix: str = "device",
    history: bool = False,
) -> list[LinkedAccount]:
    """Add ``count`` devices to ``approver``'s account, one after the other (for tests and
    benchmarks). Device ``i`` (from 1) is named and homed ``root/NAME_PREFIX-i``; open it
    with ``open_state(root / f"{name_prefix}-{i}")``. The caller bounds the time.

    Raises:
        as :func:`link_device`.
    """
    return [await link_device(approver, Path(root) / f"{name_prefix}-{i}", f"{name_prefix}-{i}",
                              history=history)
            for i in range(1, count + 1)]
