"""Olm encryption for other devices: sessions made from claimed one-time keys, then one
copy per device (:func:`encrypt_for`, behind :meth:`cli.client.Client.encrypt`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import trio

from relay.protocol import DeviceList
from relay.protocol.frames import Copy, Recipient
from relay.protocol.identity import Device

from . import crypto
from .errors import SendFailed
from .state import State

if TYPE_CHECKING:
    from .client import Client

__all__ = ["CLAIM_RETRY_DELAY", "CLAIM_RETRY_MAX", "encrypt_for", "ensure_sessions",
           "has_session"]

CLAIM_RETRY_DELAY = 0.1  # seconds; doubled per retry while a device has no keys yet
CLAIM_RETRY_MAX = 1.6  # last delay tried (about 3 s in all)


def has_session(state: State, user_id: str, device: Device) -> bool:
    """Whether ``state`` holds an Olm session with ``device`` under its current identity key."""
    ss = state.session_set(user_id, device.device_id)
    return ss is not None and bool(ss.sessions) and ss.identity_key == device.curve25519


async def ensure_sessions(client: Client, user_id: str, devices: list[Device],
                          lock: trio.Lock) -> None:
    """Create an outbound Olm session with each of ``user_id``'s ``devices`` that has none,
    from one-time (else fallback) keys claimed in one request; retry for about 3 s while
    a just-linked device has uploaded no keys yet. ``lock`` keeps two tasks from
    claiming keys for the same devices.

    Raises:
        SendFailed: a device still has no key to claim.
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
            if missing and delay > CLAIM_RETRY_MAX:
                raise SendFailed(f"device {missing[0].device_id} of {user_id} has no keys "
                                 "to claim (not connected since it was linked?)")
            if missing:  # a device just linked uploads its keys right after the list
                await trio.sleep(delay)
                delay *= 2


async def encrypt_for(client: Client, lists: dict[str, DeviceList], plaintext: bytes,
                      lock: trio.Lock) -> list[Recipient]:
    """:meth:`cli.client.Client.encrypt`: sessions first (all the awaiting), then every
    copy encrypted with no ``await`` in between."""
    state = client.state
    me = (state.user_id, state.device_id)
    targets = {uid: [d for d in dl.devices if (uid, d.device_id) != me]
               for uid, dl in lists.items()}
    targets = {uid: devs for uid, devs in targets.items() if devs}
    while True:  # another task may drop a session while this one claims keys
        for uid, devs in targets.items():
            await ensure_sessions(client, uid, devs, lock)
        if all(has_session(state, uid, d) for uid, ds in targets.items() for d in ds):
            break
    return [
        Recipient(user_id=uid, devices_version=lists[uid].version, copies=[
            Copy(device_id=d.device_id,
                 body=crypto.encrypt(state.sessions[(uid, d.device_id)].sessions[0], plaintext))
            for d in devs])
        for uid, devs in targets.items()
    ]
