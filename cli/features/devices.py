"""The account's device list, primary side: approve a linking code, remove a device
(docs/protocol.md, "Linking a companion device" and "Device-list changes").

Only the primary holds the account key, so only it can sign a new list. Every
change fetches the current list from the home first (so a restored primary
never signs an older version), signs version + 1, publishes it with
``put_devices`` and only then caches it. Device ids are never reused: the next
id is one more than the highest ever handed out (kept in the state, saved
before the list is published).

Approval order (nothing changes until the code is proven good): ``link_fetch``
-> check BLAKE2b(device_info) against the code -> confirm -> record the new
device in ``state.pending_withdrawals`` (saved) -> publish the list with the new
device -> ``link_complete`` with the sealed material -> wait for the new device
to confirm -> clear the record (saved).

The new device confirms by reaching its home: it saves the material, connects
and uploads its keys. The primary polls ``get_devices {keys}`` until the home
lists the device among those holding keys (at most :data:`CONFIRM_WAIT` s). An
answer to ``link_complete`` alone proves nothing: the node holding the linking
mailbox may die before the new device reads the material (docs/reliability.md,
finding 17), and that device would stay in the list with no keys (a ghost).

Linking is atomic from the user's view: a device whose link did not complete
never stays in the account's list. If anything fails after the record was saved
(the ``put_devices`` answer lost, the connection cut, ``link_complete`` refused,
no confirmation in time), a list without the device is published over a *fresh*
connection (:func:`finish_withdrawals`); if that fails too, or the process was
killed, the record stays in the state and the next connection of this primary
(:func:`cli.client.open_client`) finishes the withdrawal. A recorded device that
has confirmed by then (it holds keys at the home) is kept, not withdrawn. Errors
name the device.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import trio

from cli.errors import ClientError, ConnectionLost, LinkFailed, NotPrimary, RelayError
from cli.events import DevicesChanged
from cli.features import linkcode, wordcode
from cli.features.linkcode import DeviceInfo, LinkCode, LinkCodeError
from cli.session import crypto, listfresh
from cli.session.state import DeviceListRejected, State
from relay.net.backoff import Backoff
from relay.protocol import DeviceList, ErrorCode, RemoteProtocolError, verify_device_list
from relay.protocol.frames import GetDevices, LinkComplete, LinkFetch, LinkInfo, PutDevices
from relay.protocol.identity import Device, decode_signed_list

if TYPE_CHECKING:
    from cli.session.session import Session

log = logging.getLogger(__name__)

NOT_FOUND_MESSAGE = "the linking code is wrong, already used or expired; nothing changed"
MISMATCH_MESSAGE = "code does not match the device; nothing changed"
REPLY_POLL = 0.2  # seconds between reads of a word-code mailbox while its device answers
REPLY_WAIT = 30.0  # seconds the new device gets to answer our PAKE message
CONFIRM_WAIT = 30.0  # seconds the new device gets to reach its home after link_complete
CONFIRM_POLL = Backoff(first=0.05, cap=1.0)  # get_devices {keys} while waiting for it


def init_account(state: State, *, device_name: str = "primary") -> None:
    """Prepare a state from :func:`cli.state.create_state`: sign device list version 1
    (this device as device 0), create 100 one-time keys and a fallback key, save.

    The list and keys are published by the next :func:`cli.client.open_client`.
    """
    ident = state.identity
    _, signed = crypto.make_device_list(
        state.account_key, 1,
        [crypto.DeviceEntry(state.device_id, ident.ed25519, ident.curve25519, device_name,
                            int(time.time()))],
    )
    state.remember_device_list(signed, state.user_id)
    ident.generate_one_time_keys(crypto.ONE_TIME_KEYS_TARGET)
    ident.generate_fallback_key()
    state.save()


@dataclass(frozen=True, slots=True)
class DeviceOffer:
    """The device a linking code points at, shown before the user confirms."""

    name: str
    fingerprint: str
    ed25519: bytes
    curve25519: bytes


@dataclass(frozen=True, slots=True)
class ApprovedDevice:
    """Result of an approval: the new device's id, label and fingerprint, the
    version of the list that added it, and what the material carried:
    ``history_sent`` of the ``history_total`` recent messages offered (the
    oldest are left out when they do not fit one linking frame) and
    ``groups`` signed group states."""

    device_id: int
    name: str
    fingerprint: str
    version: int
    history_sent: int = 0
    history_total: int = 0
    groups: int = 0


Confirm = Callable[[DeviceOffer], Awaitable[bool]]


def _require_primary(client: Session, what: str) -> None:
    if client.state.account_key is None:
        raise NotPrimary(f"only the primary device (the one holding the account key) can "
                         f"{what}; this is device {client.state.device_id}")


def _entries(devices: tuple[Device, ...] | list[Device]) -> list[crypto.DeviceEntry]:
    return [crypto.DeviceEntry(d.device_id, d.ed25519, d.curve25519, d.name, d.added_at)
            for d in devices]


async def current_own_list(client: Session) -> DeviceList:
    """The account's list as its home holds it (verified, cached); the cache if unreachable."""
    state = client.state
    try:
        return await client.get_devices(state.user_id)
    except RelayError as exc:
        if exc.code in (ErrorCode.UNKNOWN_USER, ErrorCode.UNAVAILABLE) and state.own_list():
            return state.own_list()
        raise


async def publish_own_list(client: Session, devices: list[crypto.DeviceEntry],
                           version: int) -> DeviceList:
    """Sign ``devices`` as list ``version`` with the account key, publish it, then cache it.

    Raises:
        NotPrimary; RelayError (``stale_version`` if the home has that version already);
        ConnectionLost.
    """
    _require_primary(client, "change the device list")
    state = client.state
    _, signed = crypto.make_device_list(state.account_key, version, devices)
    await client.connection.request(PutDevices, device_list=signed)
    parsed = state.remember_device_list(signed, state.user_id)  # drops removed devices' sessions
    state.published_version = version
    state.pending_withdrawals &= parsed.device_ids  # a device no longer listed is withdrawn
    await state.asave()
    return parsed


async def approve_link(
    client: Session, code: str | LinkCode, *, confirm: Confirm | None = None,
    history: bool = True, history_limit: int = linkcode.HISTORY_DEFAULT,
    confirm_wait: float = CONFIRM_WAIT, handed_over: Callable[[], None] | None = None,
) -> ApprovedDevice:
    """Approve the device behind a linking code (see the module docstring for the order).

    Returns only once the new device confirmed (it holds keys at the home), so the
    new device's side (:meth:`cli.features.linking.PendingLink.wait`, saving, the
    first connection) must run concurrently (:func:`cli.features.linking.link_device`).

    Args:
        client: the primary's connected client.
        code: as printed by ``wa-cli link`` (or parsed).
        confirm: awaited with the :class:`DeviceOffer`; ``False`` stops with nothing changed.
        confirm_wait: seconds the new device gets to reach its home after the
            material was handed over; then it is withdrawn.
        handed_over: called once ``link_complete`` was answered, before the wait.
        history: send the last ``history_limit`` messages (the oldest are left out
            when they do not fit one frame; the result says how many went).

    The material also carries the account's current signed group states (never
    Megolm session keys: the new device only gets keys shared after it joined).

    Raises:
        LinkCodeError: the code is malformed (a usage error).
        NotPrimary: this device has no account key.
        LinkFailed: wrong, used or expired code; hash mismatch; declined; or the
            completion failed or was not confirmed in time (the device is withdrawn
            again).
        RelayError, ConnectionLost: other refusals / network failures.
    """
    _require_primary(client, "approve new devices")
    if isinstance(code, str) and wordcode.is_word_code(code):
        parsed_code: LinkCode | wordcode.WordCode = wordcode.WordCode.decode(code)
        info, seal, proof_secret = await _pake_exchange(client, parsed_code)
    else:
        parsed_code = code if isinstance(code, LinkCode) else LinkCode.decode(code)
        answer = await _fetch(client, parsed_code.node_id, parsed_code.mailbox_id)
        if linkcode.info_digest(answer.device_info) != parsed_code.digest:
            raise LinkFailed(MISMATCH_MESSAGE)
        info = _device_info(answer.device_info)
        seal = functools.partial(linkcode.seal, info.ephemeral)
        proof_secret = parsed_code.secret
    state = client.state
    offer = DeviceOffer(info.name, info.fingerprint, info.ed25519, info.curve25519)
    if confirm is not None and not await confirm(offer):
        raise LinkFailed("not approved; nothing changed")

    own = await current_own_list(client)
    if any(d.ed25519 == info.ed25519 or d.curve25519 == info.curve25519 for d in own.devices):
        raise LinkFailed("this device's keys are already in the account; nothing changed")
    device_id = state.allocate_device_id()
    state.pending_withdrawals.add(device_id)  # withdrawn again unless the link completes
    await state.asave()  # the id is burnt and the withdrawal recorded before it appears anywhere
    entries = _entries(own.devices)
    entries.append(crypto.DeviceEntry(device_id, info.ed25519, info.curve25519, info.name,
                                      int(time.time())))
    version, sent, history_total, groups = own.version + 1, 0, 0, 0
    try:
        version = (await publish_own_list(client, entries, version)).version
        signed = state.device_lists[state.user_id].signed
        material = linkcode.Material(
            user_id=state.user_id, device_id=device_id, device_list=signed, name=state.name,
            contacts=dict(state.contacts),
            history=(linkcode.recent_history(list(state.history), history_limit)
                     if history else []),
            proof=(linkcode.link_proof(proof_secret, signed)
                   if proof_secret is not None else None),
            groups=[record.signed for record in state.groups.groups.values()],
            cluster=None if state.cluster is None else state.cluster.signed,
        )
        try:
            encoded, sent = material.fit()
        except ValueError as exc:
            raise LinkFailed(str(exc)) from exc
        history_total, groups = len(material.history), len(material.groups)
        if sent < history_total:
            log.info("history sync: %d of %d recent messages fit in the linking frame",
                     sent, history_total)
        body = seal(encoded)
        await client.connection.request(LinkComplete, node_id=parsed_code.node_id,
                                         mailbox_id=parsed_code.mailbox_id, body=body)
        if handed_over is not None:
            handed_over()
        await _await_confirmation(client, device_id, confirm_wait)
    except ClientError as exc:
        await _withdraw(client, device_id, info.name, exc)  # returns if it confirmed after all
    state.pending_withdrawals.discard(device_id)
    await state.asave()
    return ApprovedDevice(device_id, info.name, info.fingerprint, version, sent, history_total,
                          groups)


async def keyed_devices(client: Session) -> tuple[DeviceList, frozenset[int] | None]:
    """The account's own list as the home holds it (verified, cached) and the ids of its
    devices that hold keys there (``get_devices {keys}``); ``None`` from a home that
    does not answer ``keyed`` (a node before this field: it cannot confirm a link).

    Raises:
        RelayError, ConnectionLost; DeviceListRejected.
    """
    user_id = client.state.user_id
    answer = await client.connection.request(GetDevices, user_id=user_id, keys=True)
    own = client.state.remember_device_list(answer.device_list, user_id)
    return own, None if answer.keyed is None else frozenset(answer.keyed)


async def _await_confirmation(client: Session, device_id: int, wait: float) -> None:
    """Poll the home until ``device_id`` holds keys there (the new device saved the
    material and reached its home), at most ``wait`` seconds.

    Raises:
        LinkFailed: no confirmation in time, or the device left the list meanwhile.
        RelayError, ConnectionLost.
    """
    delays = CONFIRM_POLL.delays()
    with trio.move_on_after(wait):
        while True:
            own, keyed = await keyed_devices(client)
            if keyed is None:
                log.warning("the home node cannot confirm that device %d got the account "
                            "(no 'keyed' in its answer: an older node); not waiting", device_id)
                return
            if device_id in keyed:
                return
            if own.device(device_id) is None:
                raise LinkFailed("it left the account's list while linking")
            await trio.sleep(next(delays))
    raise LinkFailed(f"the new device did not reach its home within {wait:g} s (it did not "
                     "get the account, or could not connect)")


async def _fetch(client: Session, node_id: str, mailbox_id: bytes) -> LinkInfo:
    try:
        return await client.connection.request(LinkFetch, node_id=node_id, mailbox_id=mailbox_id)
    except RelayError as exc:
        if exc.code == ErrorCode.NOT_FOUND:
            raise LinkFailed(NOT_FOUND_MESSAGE) from exc
        raise


def _device_info(blob: bytes) -> DeviceInfo:
    try:
        return DeviceInfo.decode(blob)
    except LinkCodeError as exc:
        raise LinkFailed(f"the new device sent malformed info ({exc}); nothing changed") from exc


async def _pake_exchange(
    client: Session, code: wordcode.WordCode,
) -> tuple[DeviceInfo, Callable[[bytes], bytes], None]:
    """A word code (:mod:`cli.features.wordcode`): read the new device's SPAKE2 message,
    answer with ours (``link_complete {more}``), then wait for its info sealed under the
    PAKE key (``link_info.reply``, polled every :data:`REPLY_POLL` s for at most
    :data:`REPLY_WAIT` s). Nothing is published before that info decrypted.

    Returns:
        ``(device info, seal for the material, None)`` (no code secret: the PAKE key
        authenticates the material).

    Raises:
        LinkFailed: unknown or expired mailbox, not a word-code mailbox, no answer in
            time, or the answer does not decrypt (a wrong code: the link is over).
    """
    answer = await _fetch(client, code.node_id, code.mailbox_id)
    theirs = wordcode.read_pake_info(answer.device_info)
    if theirs is None:
        raise LinkFailed("that mailbox is not waiting for a word code; nothing changed")
    pake = wordcode.Pake(code.words, primary=True)
    try:
        n2p, p2n = pake.finish(theirs)
    except LinkCodeError as exc:
        raise LinkFailed(f"{exc}; nothing changed") from exc
    try:
        await client.connection.request(LinkComplete, node_id=code.node_id,
                                         mailbox_id=code.mailbox_id, body=pake.message, more=True)
    except RelayError as exc:
        if exc.code == ErrorCode.NOT_FOUND:
            raise LinkFailed(NOT_FOUND_MESSAGE) from exc
        raise
    with trio.move_on_after(REPLY_WAIT):
        while answer.reply is None:
            await trio.sleep(REPLY_POLL)
            answer = await _fetch(client, code.node_id, code.mailbox_id)
    if answer.reply is None:
        raise LinkFailed(f"the new device did not answer within {REPLY_WAIT:g} s; nothing "
                         "changed")
    try:
        info = _device_info(wordcode.open_box(n2p, answer.reply))
    except LinkCodeError as exc:
        raise LinkFailed(f"{exc}; nothing changed. Check the code and run 'wa-cli link' "
                         "again") from exc
    return info, functools.partial(wordcode.seal_box, p2n), None


async def _withdraw(client: Session, device_id: int, name: str, cause: ClientError) -> None:
    """Linking failed after the device was recorded in ``pending_withdrawals``: take it
    (and only it: other recorded devices may belong to approvals still running) out of
    the account's list, over this connection if it still works, else over a *fresh*
    one. Returns only if the device confirmed after all (it holds keys at the home:
    the link did complete, and the device is kept).

    Raises:
        LinkFailed: always otherwise, naming the device and what became of it.
    """
    reason = (NOT_FOUND_MESSAGE.split(";")[0] if isinstance(cause, RelayError)
              and cause.code == ErrorCode.NOT_FOUND else str(cause))
    label = f"device {device_id} ({name})"
    done = None
    try:
        if not isinstance(cause, ConnectionLost):
            with contextlib.suppress(ConnectionLost):  # it died too: a fresh one below
                done = await finish_withdrawals(client, only={device_id})
        if done is None:
            async with client.open_fresh() as fresh:
                done = await finish_withdrawals(fresh, only={device_id})
    except ClientError as exc:
        raise LinkFailed(f"linking {label} failed ({reason}) and it could not be withdrawn "
                         f"yet ({exc}); the next wa-cli command on this device withdraws "
                         "it unless it reaches its home first") from cause
    if device_id in done.confirmed:
        log.info("linking %s: %s, but the device reached its home after all", label, reason)
        return
    what = ("it was withdrawn from the account again"
            if device_id in {i for i, _ in done.withdrawn} else "it was not added to the account")
    raise LinkFailed(f"linking {label} failed ({reason}); {what}") from cause


@dataclass(frozen=True)
class Withdrawals:
    """What :func:`finish_withdrawals` did.

    Attributes:
        withdrawn: ``(device_id, name)`` of each recorded device that was in the
            home's list and is now withdrawn.
        confirmed: recorded devices kept because they hold keys at the home (their
            link completed after all).
    """

    withdrawn: list[tuple[int, str]]
    confirmed: frozenset[int]


async def finish_withdrawals(client: Session, *, only: set[int] | None = None) -> Withdrawals:
    """Take the devices of ``state.pending_withdrawals`` (links that began and did not
    complete) out of the account's list as the home holds it, and clear the record.
    A recorded device that holds keys at the home confirmed its link (it got the
    material and reached its home): it is kept.

    Args:
        only: handle just these recorded devices (a failed approval withdraws its own
            device: another approval of this process may be waiting for its device,
            recorded too; the daemon serves requests concurrently).

    Raises:
        NotPrimary; RelayError, ConnectionLost (the record stays for the next try).
    """
    state = client.state
    pending = set(state.pending_withdrawals)
    if only is not None:
        pending &= only
    if not pending:
        return Withdrawals([], frozenset())
    own, keyed = await keyed_devices(client)  # never the cache: it may lack the device
    confirmed = frozenset(pending & (keyed or frozenset()))
    ghosts = [(d.device_id, d.name) for d in own.devices
              if d.device_id in pending and d.device_id not in confirmed]
    if ghosts:
        await publish_own_list(client, _entries([d for d in own.devices
                                                 if d.device_id not in pending - confirmed]),
                               own.version + 1)
    state.pending_withdrawals -= pending
    await state.asave()
    return Withdrawals(ghosts, confirmed)


async def finish_pending_withdrawals(client: Session) -> None:
    """:func:`finish_withdrawals` when a primary connects (:func:`cli.client.open_client`):
    each device withdrawn is logged as a warning; a refusal is logged and the record
    kept for the next connection.

    Raises:
        ConnectionLost: the connection closed.
    """
    try:
        done = await finish_withdrawals(client)
    except RelayError as exc:
        log.warning("could not withdraw the devices whose linking did not complete (%s): %s; "
                    "will retry on the next connection",
                    ", ".join(str(i) for i in sorted(client.state.pending_withdrawals)), exc)
        return
    for device_id, name in done.withdrawn:
        log.warning("withdrew device %d (%s) from the account: its linking did not complete",
                    device_id, name)
    for device_id in sorted(done.confirmed):
        log.info("device %d completed its linking after all (it reached its home); kept",
                 device_id)


async def remove_device(client: Session, device_id: int) -> DeviceList:
    """Publish the account's list without ``device_id`` (primary only). The home then
    purges its queue and refuses it; sessions with it are dropped here.

    Raises:
        NotPrimary; ClientError (this device itself, or no such device); RelayError;
        ConnectionLost.
    """
    _require_primary(client, "remove devices")
    state = client.state
    if device_id == state.device_id:
        raise ClientError(f"device {device_id} is this (primary) device; it cannot be removed")
    own = await current_own_list(client)
    if own.device(device_id) is None:
        raise ClientError(f"the account has no device {device_id} "
                          f"(devices: {', '.join(str(i) for i in sorted(own.device_ids))})")
    remaining = [d for d in own.devices if d.device_id != device_id]
    return await publish_own_list(client, _entries(remaining), own.version + 1)


async def refresh_own_list(client: Session) -> DeviceList | None:
    """Primary: re-sign the account's list (same devices, version + 1) when less than
    :data:`cli.session.listfresh.REFRESH_BEFORE` of its lifetime is left, so contacts never
    see it expire while the primary runs. A failure is logged, not raised.

    Returns:
        The new list, or ``None`` (not needed, or it failed).

    Raises:
        ConnectionLost: the connection closed.
    """
    state = client.state
    own = state.own_list()
    if state.account_key is None or own is None or not listfresh.needs_refresh(own, time.time()):
        return None
    try:
        own = await current_own_list(client)
        if not listfresh.needs_refresh(own, time.time()):
            return None
        new = await publish_own_list(client, _entries(own.devices), own.version + 1)
    except (RelayError, DeviceListRejected) as exc:
        log.warning("could not re-sign the account's device list before it expires: %s", exc)
        return None
    log.info("re-signed the account's device list as version %d", new.version)
    return new


LIST_CHECK_INTERVAL = 6 * 3600.0
"""Seconds between expiry checks of the own list while a primary runs."""


async def keep_own_list_fresh(client: Session) -> None:
    """Primary: :func:`refresh_own_list` every :data:`LIST_CHECK_INTERVAL` seconds, until
    cancelled (a long-running client, e.g. the daemon, never lets its list expire).

    Raises:
        ConnectionLost: the connection closed.
    """
    while True:
        await trio.sleep(LIST_CHECK_INTERVAL)
        await refresh_own_list(client)


def device_list_notice(client: Session, sender_user: str, body: bytes) -> DevicesChanged | None:
    """Apply a ``device_list`` envelope (``sender_user``'s new signed list, pushed by its
    home): verify it, cache it (sessions with removed devices are dropped; sessions
    with added devices are opened on the next send; this device's sender key of every
    group ``sender_user`` is in is rotated when a device was removed) and describe the
    change.

    Returns:
        The change, or ``None`` if the list is not newer than the cached one (a late
        or repeated notice) or no list was cached before (nothing to compare).

    Raises:
        DeviceListRejected: malformed, not signed by ``sender_user``'s account key, or a
            different list under the cached version.
    """
    try:
        signed = decode_signed_list(body)
    except RemoteProtocolError as exc:
        raise DeviceListRejected(f"malformed device-list notice from {sender_user}") from exc
    state = client.state
    try:
        parsed = verify_device_list(signed, sender_user)
    except RemoteProtocolError as exc:
        raise DeviceListRejected(f"device list of {sender_user} rejected: {exc.message}") from exc
    before = state.device_lists.get(sender_user)
    if before is not None and parsed.version < before.parsed.version:
        return None  # an older notice arriving after a newer list
    state.remember_device_list(signed, sender_user)
    if before is None or parsed.version == before.parsed.version:
        return None
    old = {d.device_id: d for d in before.parsed.devices}
    new = {d.device_id: d for d in parsed.devices}
    added = tuple((i, new[i].name) for i in sorted(new.keys() - old.keys()))
    removed = tuple((i, old[i].name) for i in sorted(old.keys() - new.keys()))
    for i in sorted(new.keys() & old.keys()):  # same id, new keys: removed and added
        if new[i].curve25519 != old[i].curve25519 or new[i].ed25519 != old[i].ed25519:
            removed += ((i, old[i].name),)
            added += ((i, new[i].name),)
    if removed:  # a removed device must not get anything sent from now on (issue 10, 7)
        for gid, record in state.groups.groups.items():
            if sender_user in record.state.members:
                state.groups.rotate(gid)
    return DevicesChanged(sender_user, state.alias_of(sender_user) or "", parsed.version,
                          added, removed)
