"""Receiving group traffic: control payloads over Olm and Megolm ``group`` envelopes.

See :mod:`cli.group_messaging` for the payloads. A ``group_state`` is adopted if
its chain verifies and extends the held one, or, for a group this device does
not know, starts at version 1 and comes from the member who added this account
(:func:`cli.session.group_chain.merge`); otherwise it is dropped with a warning, and the
held state stays. A conflicting state for a held version is a fork: it is
reported as :class:`GroupForked` and the group is marked forked (no more sends
to it). A ``group_key`` is accepted from a device of a current member (its
embedded chain is adopted first when newer, so a member learns of a change
from any member); a key share under an *older* state than held still counts,
since the member may not have caught up yet. A key share for a group not known
yet (its state not yet in from the member who added this account) is kept,
bound to that group id; whether its sender is a member is checked when a
message is decrypted with it. A ``group`` envelope decrypts only with a key
received from that very sender device, and only a member's message to a group
this account is still in is shown.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import msgpack

from cli.events import Dropped, GroupChanged, GroupForkSeen, Message, Requested
from cli.features import effects, payload
from cli.features.group_messaging import GROUP_KEY, GROUP_STATE
from cli.session import groups
from cli.session.group_chain import MAX_CHAIN, GroupForked
from cli.session.group_state import GroupStateRejected, SignedGroupState
from cli.session.state import seen_key
from relay.protocol.codec import refuse_ext

if TYPE_CHECKING:
    from cli.session.session import Session
    from relay.protocol.frames import Envelope

__all__ = ["CONTROL_TYPES", "GroupChanged", "GroupForkSeen", "control_type", "on_control",
           "open_group_envelope"]

log = logging.getLogger(__name__)

CONTROL_TYPES = frozenset({GROUP_STATE, GROUP_KEY})


def control_type(plaintext: bytes) -> str | None:
    """The payload type if ``plaintext`` is a group control payload, else ``None``."""
    try:
        m = msgpack.unpackb(plaintext, raw=False, strict_map_key=True, ext_hook=refuse_ext,
                            max_map_len=16, max_array_len=MAX_CHAIN)
    except (ValueError, msgpack.UnpackException):
        return None
    kind = m.get("type") if isinstance(m, dict) else None
    return kind if kind in CONTROL_TYPES else None


def _adopt(client: Session, chain: list[SignedGroupState], sender: str) -> GroupChanged | None:
    """Adopt a received history if it is new and verifies (raises GroupStateRejected,
    GroupForked otherwise)."""
    store, me = client.state.groups, client.state.user_id
    candidate = groups.parse_state(chain[-1])
    if candidate.group_id not in store.groups and me not in candidate.members:
        return None  # a group we are not in and never were: nothing to keep
    adopted = store.apply(chain, sender=sender, me=me)
    if adopted is None:
        return None
    previous, new = adopted
    before = set(previous.members) if previous else set()
    if before - set(new.members):
        store.rotate(new.group_id)  # removed members must not get our later messages
    return GroupChanged(new.hex_id, new.name, new.version, new.signer,
                        tuple(sorted(set(new.members) - before)),
                        tuple(sorted(before - set(new.members))), me not in new.members)


def _signed(m: dict) -> list[SignedGroupState]:
    """The chain of a control payload (``chain``, else the single ``state``)."""
    raws = m.get("chain") or [m.get("state")]
    if not isinstance(raws, list):
        raise GroupStateRejected("control payload with a malformed group history")
    out = []
    for raw in raws:
        if not (isinstance(raw, dict) and isinstance(raw.get("body"), bytes)
                and isinstance(raw.get("signature"), bytes)):
            raise GroupStateRejected("control payload without a signed group state")
        out.append(SignedGroupState(raw["body"], raw["signature"]))
    return out


def _fork_seen(exc: GroupForked, sender_user: str) -> GroupForkSeen:
    log.warning("group %s: %s (sent by %s); keeping the held history, no more sends to it",
                exc.held.hex_id[:8], exc, sender_user[:12])
    return GroupForkSeen(exc.held.hex_id, exc.held.name, exc.other.version,
                         exc.held.signer, exc.other.signer, sender_user)


def on_control(client: Session, sender_user: str, sender_device: int, msg_id: bytes,
               plaintext: bytes) -> GroupChanged | GroupForkSeen | Dropped | Requested | None:
    """Handle a decrypted ``group_state`` / ``group_key`` payload from an Olm envelope.

    The caller already authenticated the sender device (Olm) and checked dedupe;
    this marks the message seen. Returns the event to show (``None``: nothing).
    """
    def dropped(reason: str) -> Dropped:
        log.warning("dropping group control %s from %s/%d: %s",
                    msg_id.hex()[:8], sender_user[:8], sender_device, reason)
        return Dropped(msg_id, sender_user, sender_device, reason)

    m = msgpack.unpackb(plaintext, raw=False, strict_map_key=True, ext_hook=refuse_ext,
                        max_map_len=16, max_array_len=MAX_CHAIN)
    if m.get("v") != payload.VERSION:
        return dropped("unknown group control payload version")
    if m.get("msg_id") != msg_id:
        return dropped("the msg_id inside the ciphertext differs from the envelope's")
    client.state.mark_seen(seen_key(sender_user, msg_id))
    store = client.state.groups
    try:
        chain = _signed(m)
        if m["type"] == GROUP_KEY and groups.parse_state(chain[-1]).group_id != m.get("group_id"):
            return dropped("group key share carries the state of another group")
        event = _adopt(client, chain, sender_user)
    except GroupForked as exc:
        return _fork_seen(exc, sender_user)
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
    if record is not None and sender_user not in record.state.members:
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

