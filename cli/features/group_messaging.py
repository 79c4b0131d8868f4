"""Groups over the network: admin changes and sender-key sends (receiving: :mod:`cli.group_receiving`).

Control messages travel pairwise over Olm (the 1:1 path: one copy per device of
every target user, own other devices included), as payloads of type

* ``group_state`` ``{v, type, msg_id, ts, state: {body, signature}, chain:
  [{body, signature}, ...]}``: a new account-signed group state
  (:mod:`cli.group_state`) and the versions before it (:mod:`cli.session.group_chain`:
  the whole history from version 1 for a member added by this change, the last
  :data:`cli.session.group_chain.CHAIN_TAIL` versions for the others), sent by an
  admin's primary device to the old and new members;
* ``group_key`` ``{v, type, msg_id, ts, group_id, session_id, session_key,
  sender_device, state, chain}``: the sending device's Megolm session key at its
  current index, with the group state it was shared under and the versions
  before it (so a member that missed a change learns it from any member).

A group message is **one** Megolm encryption (:func:`cli.groups.encrypt`) sent
as ``group_send`` with that single body and every member device except the
sending one. Before it, the session key goes over Olm to the member devices
that lack it (users at once, all their devices), and the session is rotated
when a device holding it is no longer a recipient (a member removed, a device
unlinked), after 100 messages or after 7 days. On ``stale_devices`` the
attached list is verified (signature, growing version), the key shared with
new devices and the message resent with the same ``msg_id`` (at most
:data:`MAX_SEND_ROUNDS` rounds).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import msgpack

from cli.errors import RelayError, SendFailed
from cli.features import outbound, payload, retry
from cli.features.catchup import catch_up
from cli.features.outbound import has_session
from cli.session import group_chain, groups
from cli.session.group_state import GroupError, GroupState, SignedGroupState
from relay.protocol import DeviceList, ErrorCode
from relay.protocol.frames import GroupRecipient, GroupSend, Send

if TYPE_CHECKING:
    from cli.session.session import Session

__all__ = [
    "GroupSendError", "GroupSendResult", "NotGroupAdmin", "add_member", "create_group",
    "remove_member", "send_group", "send_group_payload", "send_group_text", "send_pairwise",
]

log = logging.getLogger(__name__)

MAX_SEND_ROUNDS = 3
SEND_BUDGET = 512 * 1024  # bytes of Olm copies per pairwise send (frames are <= 1 MiB)
SEND_MAX_COPIES = 1000  # copies per pairwise send (nodes accept 1024)
OLM_OVERHEAD = 256  # bytes an Olm pre-key copy adds to its plaintext, generously
GROUP_STATE = "group_state"
GROUP_KEY = "group_key"

Device3 = tuple[str, int, bytes]  # (user_id, device_id, curve25519)


class NotGroupAdmin(GroupError):
    """This device cannot change the group (no account key, or not an admin)."""


class GroupSendError(GroupError):
    """A group message cannot be sent (unknown group, not a member)."""


@dataclass(frozen=True, slots=True)
class GroupSendResult:
    """Outcome of a group send: ``status`` as for :class:`cli.events.SendResult`."""

    msg_id: bytes
    status: str
    group_id: str
    name: str


# ------------------------------------------------------------------ pairwise


def _control(kind: str, msg_id: bytes, **fields) -> bytes:
    return msgpack.packb({"v": payload.VERSION, "type": kind, "msg_id": msg_id,
                          "ts": int(time.time() * 1000), **fields}, use_bin_type=True)


def _chunks(user_ids: list[str], lists: dict[str, DeviceList], size: int) -> list[list[str]]:
    """Split users so that one ``send`` stays under :data:`SEND_BUDGET` bytes and
    :data:`SEND_MAX_COPIES` copies (about ``size`` + :data:`OLM_OVERHEAD` bytes a copy)."""
    chunks: list[list[str]] = []
    current: list[str] = []
    used = copies = 0
    for uid in user_ids:
        n = max(1, len(lists[uid].devices))
        if current and (used + n * (size + OLM_OVERHEAD) > SEND_BUDGET
                        or copies + n > SEND_MAX_COPIES):
            chunks.append(current)
            current, used, copies = [], 0, 0
        current.append(uid)
        used += n * (size + OLM_OVERHEAD)
        copies += n
    return [*chunks, current] if current else chunks


async def send_pairwise(
    client: Session, user_ids: list[str], build: Callable[[bytes], bytes],
    lists: dict[str, DeviceList] | None = None,
) -> str | None:
    """Olm-encrypt a control payload for every device of ``user_ids`` (not this device).

    One ``send`` per chunk of users (:func:`_chunks`: a large group's state times
    hundreds of devices would not fit one frame); each chunk has its own random
    ``msg_id`` and plaintext ``build(msg_id)`` (the id is repeated inside).
    ``lists`` (user_id -> cached list) is used and updated in place after
    ``stale_devices``.

    Returns:
        ``"queued"`` if any chunk was queued, else ``"stored"``; ``None`` if there
        was no device to send to.

    Raises:
        SendFailed, RelayError, DeviceListRejected, ConnectionLost.
    """
    lists = {} if lists is None else lists
    for uid in user_ids:
        if uid not in lists:
            lists[uid] = await client.device_list(uid)
    size = len(build(bytes(16)))
    statuses = set()
    for chunk in _chunks(user_ids, lists, size):
        msg_id = os.urandom(16)
        plaintext = build(msg_id)
        for _ in range(MAX_SEND_ROUNDS):
            recipients = await outbound.encrypt_for(client, {u: lists[u] for u in chunk}, plaintext)
            if not recipients:
                break
            try:
                answer = await client.request_encrypted(Send, msg_id=msg_id,
                                                        recipients=recipients)
            except RelayError as exc:
                _learn_stale(client, exc, lists)
                continue
            statuses.add(answer.status)
            break
        else:
            raise SendFailed(f"device lists kept changing; gave up after {MAX_SEND_ROUNDS} "
                             "attempts")
    if not statuses:
        return None
    return "queued" if "queued" in statuses else "stored"


def _learn_stale(client: Session, exc: RelayError, lists: dict[str, DeviceList]) -> None:
    """Adopt the list of a ``stale_devices`` refusal (verified, must grow); else re-raise."""
    frame = exc.frame
    if exc.code != ErrorCode.STALE_DEVICES or frame.device_list is None or frame.user_id not in lists:
        raise exc
    old = lists[frame.user_id].version
    new = client.state.remember_device_list(frame.device_list, frame.user_id)
    if new.version <= old:
        raise SendFailed(f"relay says the device list of {frame.user_id} is stale but served "
                         f"version {new.version} (have {old})") from exc
    lists[frame.user_id] = new


# ------------------------------------------------------------------ admin changes


def _require_admin(client: Session, record: groups.GroupRecord | None) -> None:
    state = client.state
    if state.account_key is None:
        raise NotGroupAdmin(
            f"this is device {state.device_id}, which has no account key: only the primary "
            "device can create or change a group")
    if record is not None and state.user_id not in record.state.admins:
        raise NotGroupAdmin(f"you are not an admin of group {record.state.name!r}")


def _chain_maps(chain: list[SignedGroupState]) -> list[dict]:
    return [s.to_map() for s in chain]


async def _publish(client: Session, previous: groups.GroupRecord | None, members: list[str],
                   admins: list[str], name: str, group_id: bytes, creator: str) -> GroupState:
    state = client.state
    before = previous.state if previous is not None else None
    for uid in members:  # every member must exist before anything is signed
        if uid != state.user_id and (before is None or uid not in before.members):
            await client.device_list(uid, fresh=True)
    new, signed = groups.make_state(
        state.account_key, group_id=group_id, name=name, members=members, admins=admins,
        version=1 if before is None else before.version + 1, creator=creator,
        prev=previous.signed.digest() if previous is not None else b"")
    state.groups.apply([signed], sender=None if previous is None else state.user_id,
                       me=state.user_id)
    if before is not None and set(before.members) - set(new.members):
        state.groups.rotate(group_id)  # the leaver must not get anything sent from now on
    await state.asave()
    record = state.groups.groups[group_id]
    old = set(before.members) if before else set()
    newcomers = sorted(set(new.members) - old - {state.user_id})
    others = sorted((set(new.members) | old) - set(newcomers))
    for targets, chain in ((newcomers, group_chain.tail(record.chain, None)),
                           (others, group_chain.tail(record.chain))):
        if targets:
            await send_pairwise(client, targets, lambda msg_id, chain=chain: _control(
                GROUP_STATE, msg_id, state=signed.to_map(), chain=_chain_maps(chain)))
    return new


async def create_group(client: Session, name: str, members: list[str]) -> GroupState:
    """Create a group of this account (admin) and ``members`` (user_ids); tell them.

    Raises:
        NotGroupAdmin: no account key on this device.
        GroupError: bad name, too many members, the name is taken here.
        RelayError (``unknown_user``), SendFailed, ConnectionLost.
    """
    _require_admin(client, None)
    me = client.state.user_id
    if any(r.state.name == name for r in client.state.groups.groups.values()):
        raise GroupError(f"you already have a group called {name!r}")
    return await _publish(client, None, [me, *members], [me], name, groups.new_group_id(), me)


async def add_member(client: Session, group: str, user_id: str) -> GroupState:
    """Add ``user_id`` to ``group`` (name or id); tell every member, the newcomer included.

    Raises:
        NotGroupAdmin, GroupError (unknown group, already a member), RelayError, SendFailed.
    """
    record = client.state.groups.find(group)
    _require_admin(client, record)
    old = record.state
    if user_id in old.members:
        raise GroupError(f"{user_id} is already a member of {old.name!r}")
    return await _publish(client, record, [*old.members, user_id], list(old.admins), old.name,
                          old.group_id, old.creator)


async def remove_member(client: Session, group: str, user_id: str) -> GroupState:
    """Remove ``user_id`` (and its admin role) from ``group``; tell old and new members.

    This device's sender key is rotated: the removed member cannot decrypt later messages.

    Raises:
        NotGroupAdmin, GroupError (unknown group, not a member, last admin), RelayError.
    """
    record = client.state.groups.find(group)
    _require_admin(client, record)
    old = record.state
    if user_id not in old.members:
        raise GroupError(f"{user_id} is not a member of {old.name!r}")
    admins = [a for a in old.admins if a != user_id]
    if not admins:
        raise GroupError("a group needs an admin; make someone else admin first")
    return await _publish(client, record, [m for m in old.members if m != user_id], admins,
                          old.name, old.group_id, old.creator)


# ------------------------------------------------------------------ sending


def _recipients(client: Session, lists: dict[str, DeviceList]) -> set[Device3]:
    me = (client.state.user_id, client.state.device_id)
    return {(uid, d.device_id, d.curve25519) for uid, dl in lists.items() for d in dl.devices
            if (uid, d.device_id) != me}


async def _share_key(client: Session, record: groups.GroupRecord, out: groups.OutboundSession,
                     user_ids: list[str], lists: dict[str, DeviceList]) -> None:
    """Send the session key at its current index to every device of ``user_ids``."""
    session_key = out.session_key()

    def build(msg_id: bytes) -> bytes:
        return _control(GROUP_KEY, msg_id, group_id=record.state.group_id,
                        session_id=out.session_id, session_key=session_key,
                        sender_device=client.state.device_id, state=record.signed.to_map(),
                        chain=_chain_maps(group_chain.tail(record.chain)))

    await send_pairwise(client, user_ids, build, lists)
    # Only devices that got a real (Olm-encrypted) copy have the key now; a device that
    # had no keys to claim got a withheld copy and must be shared with again on a later
    # send (fault-suite finding 10: a half-linked device never got a sender's key).
    me = (client.state.user_id, client.state.device_id)
    out.shared |= {(uid, d.device_id, d.curve25519) for uid in user_ids
                   for d in lists[uid].devices
                   if (uid, d.device_id) != me and has_session(client.state, uid, d)}


async def send_group_payload(client: Session, group_id: bytes, msg_id: bytes, inner: bytes) -> str:
    """Encrypt an encoded :mod:`cli.payload` plaintext once with this device's sender key
    for the group and fan it out with ``group_send``; returns ``"stored"`` or ``"queued"``.

    Raises:
        GroupSendError: unknown group or not a member.
        PartialSend: some members' homes refused it, the others' stored it (recorded
            as ``refused_users`` in its history entry for ``send --retry``).
        SendFailed, RelayError, DeviceListRejected, ConnectionLost.
    """
    state = client.state
    record = state.groups.groups.get(group_id)
    if record is None or state.user_id not in record.state.members:
        raise GroupSendError("you are not a member of this group")
    if record.forked is not None:
        raise GroupSendError(
            f"group {record.state.name!r} has two histories (a forked state was seen at "
            f"version {record.forked}); nothing is sent to it: ask an admin to check who is "
            "in it, then leave and be added again")
    lists = {uid: await client.device_list(uid) for uid in record.state.members}
    body, body_session = None, None
    for _ in range(MAX_SEND_ROUNDS):
        targets = _recipients(client, lists)
        out, _ = state.groups.outbound_for(group_id, targets)
        need = sorted({uid for uid, _, _ in targets - out.shared})
        if need:  # exported at the current index, so before (re-)encrypting this message
            await _share_key(client, record, out, need, lists)
            body = None
        me = (state.user_id, state.device_id)
        recipients = [
            GroupRecipient(user_id=uid, devices_version=dl.version,
                           device_ids=[d.device_id for d in dl.devices if (uid, d.device_id) != me])
            for uid, dl in lists.items()]
        if body is None or body_session != out.session_id:
            body, body_session = groups.encrypt(out, group_id, inner), out.session_id
        retry.note_addressed(client, msg_id, {(r.user_id, d) for r in recipients
                                              for d in r.device_ids})
        try:  # right after encrypting: saved first, sent in ratchet order
            answer = await client.request_encrypted(GroupSend, msg_id=msg_id, body=body,
                                                    recipients=recipients)
        except RelayError as exc:
            if exc.frame.refused_users:
                retry.note_partial(client, msg_id, exc)
            _learn_stale(client, exc, lists)
            continue
        return answer.status
    raise SendFailed(f"device lists of the group kept changing; gave up after "
                     f"{MAX_SEND_ROUNDS} attempts")


async def send_group(client: Session, group: str, p: payload.Payload) -> GroupSendResult:
    """Record ``p`` (its ``msg_id``; ``to`` should be the group id in hex) in local history
    and send it to ``group`` (name or id): one encryption, one ``group_send``. Used for
    text and for files (``p`` a :class:`cli.payload.FilePayload` after the upload).

    First the device processes what is queued for it (:func:`cli.features.catchup.catch_up`,
    kept in the inbox), so a removal it missed is adopted before anything leaves.

    Raises:
        GroupError: unknown group, not a member.
        SendFailed, RelayError, DeviceListRejected, ConnectionLost.
    """
    await catch_up(client)  # learn of removals first (issue 10, finding 7)
    state = client.state
    record = state.groups.find(group)
    state.history.append({
        "id": p.msg_id.hex(), "direction": "out", "peer": record.state.hex_id,
        "group_id": record.state.hex_id, "from": state.user_id, "from_device": state.device_id,
        "ts": p.ts, "from_name": state.name, "resends": 0, **payload.history_fields(p),
    })
    status = await send_group_payload(client, record.state.group_id, p.msg_id, p.encode())
    return GroupSendResult(p.msg_id, status, record.state.hex_id, record.state.name)


async def send_group_text(client: Session, group: str, text: str) -> GroupSendResult:
    """Send ``text`` to ``group`` (name or id); see :func:`send_group`.

    Raises:
        ValueError: text too long. As :func:`send_group` otherwise.
    """
    if len(text) > payload.MAX_TEXT:
        raise ValueError(f"text is longer than {payload.MAX_TEXT} characters")
    record = client.state.groups.find(group)
    p = payload.TextPayload(os.urandom(16), text, int(time.time() * 1000), client.state.name,
                            record.state.hex_id)
    return await send_group(client, group, p)
