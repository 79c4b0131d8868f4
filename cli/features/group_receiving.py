"""Receiving group traffic: control payloads over Olm and Megolm ``group`` envelopes.

See :mod:`cli.group_messaging` for the payloads. A ``group_state`` is adopted if
it verifies and may follow the held state (:func:`cli.group_state.check_update`);
otherwise it is dropped with a warning, and the held state stays. A
``group_key`` is accepted from a device of a current member (its embedded state
is adopted first when newer); a key share under an *older* state than held
still counts, since the member may not have caught up yet. A ``group``
envelope decrypts only with a key received from that very sender device, and
only a member's message to a group this account is still in is shown.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import msgpack

from cli.events import Dropped, GroupChanged, Message, Requested
from cli.features import effects, payload
from cli.features.group_messaging import GROUP_KEY, GROUP_STATE
from cli.session import groups
from cli.session.group_state import GroupStateRejected, SignedGroupState
from cli.session.state import seen_key

if TYPE_CHECKING:
    from cli.session.session import Session
    from relay.protocol.frames import Envelope

__all__ = ["CONTROL_TYPES", "GroupChanged", "control_type", "on_control", "open_group_envelope"]

log = logging.getLogger(__name__)

CONTROL_TYPES = frozenset({GROUP_STATE, GROUP_KEY})


def control_type(plaintext: bytes) -> str | None:
    """The payload type if ``plaintext`` is a group control payload, else ``None``."""
    try:
        m = msgpack.unpackb(plaintext, raw=False, strict_map_key=True, max_ext_len=0,
                            max_map_len=16, max_array_len=4)
    except (ValueError, msgpack.UnpackException):
        return None
    kind = m.get("type") if isinstance(m, dict) else None
    return kind if kind in CONTROL_TYPES else None


def _adopt(client: Session, signed: SignedGroupState) -> GroupChanged | None:
    """Adopt a state if it is new and verifies (raises GroupStateRejected otherwise)."""
    store, me = client.state.groups, client.state.user_id
    candidate = groups.parse_state(signed)
    if candidate.group_id not in store.groups and me not in candidate.members:
        return None  # a group we are not in and never were: nothing to keep
    adopted = store.apply(signed)
    if adopted is None:
        return None
    previous, new = adopted
    before = set(previous.members) if previous else set()
    if before - set(new.members):
        store.rotate(new.group_id)  # removed members must not get our later messages
    return GroupChanged(new.hex_id, new.name, new.version, new.signer,
                        tuple(sorted(set(new.members) - before)),
                        tuple(sorted(before - set(new.members))), me not in new.members)


def _signed(m: dict) -> SignedGroupState:
    raw = m.get("state")
    if not (isinstance(raw, dict) and isinstance(raw.get("body"), bytes)
            and isinstance(raw.get("signature"), bytes)):
        raise GroupStateRejected("control payload without a signed group state")
    return SignedGroupState(raw["body"], raw["signature"])


def on_control(client: Session, sender_user: str, sender_device: int, msg_id: bytes,
               plaintext: bytes) -> GroupChanged | Dropped | Requested | None:
    """Handle a decrypted ``group_state`` / ``group_key`` payload from an Olm envelope.

    The caller already authenticated the sender device (Olm) and checked dedupe;
    this marks the message seen. Returns the event to show (``None``: nothing).
    """
    def dropped(reason: str) -> Dropped:
        log.warning("dropping group control %s from %s/%d: %s",
                    msg_id.hex()[:8], sender_user[:8], sender_device, reason)
        return Dropped(msg_id, sender_user, sender_device, reason)

    m = msgpack.unpackb(plaintext, raw=False, strict_map_key=True, max_ext_len=0,
                        max_map_len=16, max_array_len=4)
    if m.get("v") != payload.VERSION:
        return dropped("unknown group control payload version")
    if m.get("msg_id") != msg_id:
        return dropped("the msg_id inside the ciphertext differs from the envelope's")
    client.state.mark_seen(seen_key(sender_user, msg_id))
    store = client.state.groups
    try:
        signed = _signed(m)
        if m["type"] == GROUP_KEY and groups.parse_state(signed).group_id != m.get("group_id"):
            return dropped("group key share carries the state of another group")
        event = _adopt(client, signed)
    except GroupStateRejected as exc:
        if m["type"] == GROUP_STATE:
            return dropped(f"group change rejected: {exc}")
        event = None  # a key share under an older state than ours: the key may still do
    if m["type"] == GROUP_STATE:
        return effects.on_group_changed(client.state, event)
    group_id, sid, key = m.get("group_id"), m.get("session_id"), m.get("session_key")
    if not (isinstance(group_id, bytes) and isinstance(sid, str) and isinstance(key, str)):
        return dropped("malformed group key share")
    record = store.groups.get(group_id)
    if m.get("sender_device") != sender_device:
        return dropped("group key share names another sender device")
    if record is None or sender_user not in record.state.members:
        return dropped("group key from someone who is not a member")
    try:
        store.add_inbound(group_id, sender_user, sender_device, sid, key)
    except groups.GroupDecryptError as exc:
        return dropped(str(exc))
    return effects.on_group_changed(client.state, event)


async def open_group_envelope(client: Session, env: Envelope
                              ) -> Message | Dropped | Requested | None:
    """Decrypt a ``group`` envelope (one Megolm body) into a :class:`Message` (``None``:
    duplicate). The sender must be a member in this device's state, and the group
    id and msg_id inside the ciphertext must match."""
    def dropped(reason: str) -> Dropped:
        log.warning("dropping group message %s from %s/%d: %s",
                    env.msg_id.hex()[:8], env.sender_user[:8], env.sender_device, reason)
        return Dropped(env.msg_id, env.sender_user, env.sender_device, reason)

    state = client.state
    key = seen_key(env.sender_user, env.msg_id)
    if key in state.seen:
        return None
    try:
        group_id, inner = state.groups.decrypt(env.sender_user, env.sender_device, env.body)
    except groups.GroupDecryptError as exc:
        return dropped(str(exc))
    record = state.groups.groups.get(group_id)
    if record is None:
        return dropped("unknown group")
    if env.sender_user not in record.state.members or state.user_id not in record.state.members:
        return dropped("sender or this account is not a member of the group")
    try:
        p = payload.decode(inner)
    except payload.PayloadError as exc:
        return dropped(str(exc))
    if p.msg_id != env.msg_id:
        return dropped("the msg_id inside the ciphertext differs from the envelope's")
    state.mark_seen(key)
    hex_id = record.state.hex_id
    return effects.on_payload(state, env.sender_user, env.sender_device, p, peer=hex_id,
                              group=(record.state.name, hex_id))

