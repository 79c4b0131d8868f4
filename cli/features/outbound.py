"""Olm encryption for other devices: sessions made from claimed one-time keys, then one
copy per device (:func:`encrypt_for`, also :meth:`cli.client.Client.encrypt`)."""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

import trio

from cli.errors import RelayError, SendFailed
from cli.session import crypto
from cli.session.state import State
from relay.protocol import DeviceList, ErrorCode
from relay.protocol.frames import Copy, Recipient
from relay.protocol.identity import Device

if TYPE_CHECKING:
    from cli.session.session import Session

__all__ = ["CLAIM_RETRY_DELAY", "CLAIM_RETRY_MAX", "CLAIM_RETRY_WINDOW", "MAX_REFRESH", "WITHHELD",
           "encrypt_for", "ensure_sessions", "has_session"]

log = logging.getLogger(__name__)

CLAIM_RETRY_DELAY = 0.1  # seconds; doubled per retry while a device has no keys yet
CLAIM_RETRY_MAX = 1.6  # last delay tried (about 3 s in all)
CLAIM_RETRY_WINDOW = 120.0  # seconds after being added to its list that a device is waited for
MAX_REFRESH = 3  # fresh device lists fetched per encryption after unknown_device
WITHHELD = b""
"""The body of the copy for a device that had no keys to claim: not encrypted for it
(its receiver drops it as "withheld", :mod:`cli.receiving`)."""


def has_session(state: State, user_id: str, device: Device) -> bool:
    """Whether ``state`` holds an Olm session with ``device`` under its current identity key."""
    ss = state.session_set(user_id, device.device_id)
    return ss is not None and bool(ss.sessions) and ss.identity_key == device.curve25519


async def ensure_sessions(client: Session, user_id: str, devices: list[Device],
                          lock: trio.Lock) -> list[Device]:
    """Create an outbound Olm session with each of ``user_id``'s ``devices`` that has none,
    from one-time (else fallback) keys claimed in one request. A device added to its
    list less than :data:`CLAIM_RETRY_WINDOW` seconds ago may not have uploaded its keys
    yet: the claim is retried for about 3 s. ``lock`` keeps two tasks from claiming
    keys for the same devices.

    Returns:
        The devices that still have no key to claim (never connected since they were
        linked, e.g. a link that did not complete): the caller skips them.

    Raises:
        RelayError, ConnectionLost: the claim failed.
    """
    async with lock:
        state = client.state
        missing = [d for d in devices if not has_session(state, user_id, d)]
        delay = CLAIM_RETRY_DELAY
        while missing:
            claimed = {k.device_id: k for k in await client.claim_keys(
                user_id, [d.device_id for d in missing])}
            for d in missing:
                key = claimed.get(d.device_id)
                if key is not None:
                    session = state.identity.create_outbound_session(d.curve25519, key.key)
                    state.add_session(user_id, d.device_id, d.curve25519, session)
            missing = [d for d in missing if d.device_id not in claimed]
            recent = time.time() - CLAIM_RETRY_WINDOW
            if not any(d.added_at >= recent for d in missing) or delay > CLAIM_RETRY_MAX:
                return missing
            await trio.sleep(delay)  # a device just linked uploads its keys right after the list
            delay *= 2
        return []


def _skip_warning(state: State, user_id: str, devices: list[Device]) -> None:
    who = ("your account" if user_id == state.user_id
           else f"{state.alias_of(user_id) or 'user'} ({user_id})")
    for d in devices:
        log.warning("skipped device %d (%s) of %s: it has no keys to claim (not connected "
                    "since it was linked?); this message is not encrypted for it",
                    d.device_id, d.name, who)


async def encrypt_for(client: Session, lists: dict[str, DeviceList], plaintext: bytes,
                      lock: trio.Lock | None = None) -> list[Recipient]:
    """Olm-encrypt ``plaintext`` for every device in ``lists`` (user_id -> verified
    device list) except this one, as ``Recipient(user_id, devices_version, copies)``
    per user with such a device: sessions first (all the awaiting), then every
    copy encrypted with no ``await`` in between. A device without keys to claim gets
    a withheld copy (:data:`WITHHELD`, an empty body) and a warning naming it: the
    relay wants a copy per listed device, and one device that cannot receive must not
    stop the message for all the others. A claim refused with ``unknown_device`` (the
    cached list of ``lists`` names a device removed since) fetches that user's list
    again, replacing it in ``lists``, at most :data:`MAX_REFRESH` times.

    Raises:
        SendFailed: no device of a recipient (other than this account) has keys.
        RelayError, ConnectionLost: claiming keys failed.
    """
    state = client.state
    lock = client.sessions_lock if lock is None else lock
    me = (state.user_id, state.device_id)
    refreshed = 0
    while True:  # another task may drop a session while this one claims keys
        targets = {uid: [d for d in dl.devices if (uid, d.device_id) != me]
                   for uid, dl in lists.items()}
        targets = {uid: devs for uid, devs in targets.items() if devs}
        skipped: dict[str, set[int]] = {}
        try:
            for uid, devs in targets.items():
                without = await ensure_sessions(client, uid, devs, lock)
                skipped[uid] = {d.device_id for d in without}
        except RelayError as exc:  # a cached list names a device removed since
            if exc.code != ErrorCode.UNKNOWN_DEVICE or refreshed >= MAX_REFRESH:
                raise
            refreshed += 1
            old = lists[uid].version
            lists[uid] = await client.device_list(uid, fresh=True)
            if lists[uid].version <= old:
                raise
            continue
        if all(has_session(state, uid, d) or d.device_id in skipped[uid]
               for uid, ds in targets.items() for d in ds):
            break
    for uid, devs in targets.items():
        without = [d for d in devs if not has_session(state, uid, d)]
        if uid != state.user_id and len(without) == len(devs):
            raise SendFailed(f"no device of {uid} has keys to claim (devices "
                             f"{', '.join(str(d.device_id) for d in devs)})")
        _skip_warning(state, uid, without)
    return [
        Recipient(user_id=uid, devices_version=lists[uid].version, copies=[
            Copy(device_id=d.device_id,
                 body=(crypto.encrypt(state.sessions[(uid, d.device_id)].sessions[0], plaintext)
                       if has_session(state, uid, d) else WITHHELD))
            for d in devs])
        for uid, devs in targets.items()
    ]
