"""Sender keys (Megolm via vodozemac) for groups, and the per-device group store.

No network here (see :mod:`cli.group_messaging`). Group state signing and
checks live in :mod:`cli.group_state`.

Each sending device keeps one outbound Megolm ``GroupSession`` per group
(:class:`OutboundSession`), replaced (*rotated*) after :data:`ROTATE_MESSAGES`
messages, after :data:`ROTATE_SECONDS`, or when a device that holds its key
is no longer a recipient (a member or a device left): the leaver never gets
the new key. ``GroupSession.session_key`` is exported at the session's
*current* message index, so a device that gets the key later cannot decrypt
earlier messages (checked in ``tests/cli/test_groups.py``). Received keys
become ``InboundGroupSession`` s, keyed by ``(sender_user, sender_device,
session_id)`` and bound to the group they were given for.

Envelope body of kind ``group``: ``b"\\x01" || session_id (32 bytes) || Megolm message``.
Megolm plaintext: msgpack ``{v: 1, group_id, payload}`` where ``payload`` is an
ordinary :mod:`cli.payload` plaintext (its ``to`` is the group id in hex).
"""

from __future__ import annotations

import time
from base64 import b64encode
from collections import OrderedDict
from dataclasses import dataclass, field

import msgpack
import vodozemac

from cli.session.crypto import b64decode
from cli.session.group_chain import MAX_CHAIN, Chain, GroupForked, merge
from cli.session.group_state import (
    GROUP_ID_SIZE,
    MAX_MEMBERS,
    GroupDecryptError,
    GroupError,
    GroupState,
    GroupStateRejected,
    SignedGroupState,
    check_update,
    make_state,
    new_group_id,
    parse_state,
)
from cli.session.replay import IndexWindow
from relay.protocol.codec import refuse_ext

__all__ = [
    "GROUP_ID_SIZE", "MAX_MEMBERS", "GroupDecryptError", "GroupError", "GroupForked", "GroupRecord",
    "GroupState", "GroupStateRejected", "GroupStore", "OutboundSession", "SignedGroupState",
    "check_update", "encrypt", "make_state", "new_group_id", "parse_state", "split_body",
]

ROTATE_MESSAGES = 100
"""An outbound session encrypts at most this many messages."""
ROTATE_SECONDS = 7 * 24 * 3600
"""An outbound session is used for at most this long (seconds)."""
MAX_INBOUND = 4096
"""Inbound sessions kept per device (oldest forgotten first)."""
BODY_VERSION = 1
SESSION_ID_SIZE = 32


# ------------------------------------------------------------------ sender keys


@dataclass
class OutboundSession:
    """This device's Megolm session for one group and who holds its key.

    ``shared`` holds ``(user_id, device_id, curve25519)`` of every device the key
    was sent to; ``created_at`` is in seconds since the epoch.
    """

    session: vodozemac.GroupSession
    created_at: float
    shared: set[tuple[str, int, bytes]] = field(default_factory=set)

    @property
    def session_id(self) -> str:
        """vodozemac's session id (unpadded base64 of 32 bytes)."""
        return self.session.session_id

    def expired(self, now: float) -> bool:
        """True once it encrypted :data:`ROTATE_MESSAGES` or is :data:`ROTATE_SECONDS` old."""
        return (self.session.message_index >= ROTATE_MESSAGES
                or now - self.created_at >= ROTATE_SECONDS)

    def session_key(self) -> str:
        """The key at the *current* message index (base64), to share over Olm."""
        return self.session.session_key.to_base64()


@dataclass
class GroupRecord:
    """A known group: its verified chain of versions (:mod:`cli.session.group_chain`), oldest
    first, from the root this device trusts to the current state; ``forked`` is the
    version at which a conflicting state was seen (``None``: none seen)."""

    chain: Chain
    forked: int | None = None

    @property
    def state(self) -> GroupState:
        """The current state."""
        return self.chain[-1][0]

    @property
    def signed(self) -> SignedGroupState:
        """The current state's signed form."""
        return self.chain[-1][1]


InboundKey = tuple[str, int, str]  # (sender_user, sender_device, session_id)


class GroupStore:
    """Every group this device knows, its outbound sessions and received inbound sessions.

    Lives in :class:`cli.state.State` as ``state.groups`` and is saved with it.
    """

    def __init__(self) -> None:
        self.groups: dict[bytes, GroupRecord] = {}
        self.outbound: dict[bytes, OutboundSession] = {}
        # -> (group_id, session)
        self.inbound: OrderedDict[InboundKey, tuple[bytes, vodozemac.InboundGroupSession]] = (
            OrderedDict())
        #: Message indices decrypted per inbound session (replay detection:
        #: :mod:`cli.session.replay`).
        self.decrypted: dict[InboundKey, IndexWindow] = {}

    # ------------------------------------------------------------ lookups

    def find(self, name_or_id: str) -> GroupRecord:
        """The group named ``name_or_id``, or whose hex id is or starts with it (>= 8 chars).

        Raises:
            GroupError: unknown, or several groups match.
        """
        hits = [r for r in self.groups.values() if r.state.name == name_or_id]
        if not hits and len(name_or_id) >= 8:
            hits = [r for r in self.groups.values() if r.state.hex_id.startswith(name_or_id.lower())]
        if not hits:
            raise GroupError(f"unknown group {name_or_id!r} (see 'wa-cli group list')")
        if len(hits) > 1:
            raise GroupError(f"several groups are called {name_or_id!r}; use the group id")
        return hits[0]

    # ------------------------------------------------------------ state

    def apply(self, chain: list[SignedGroupState], *, sender: str | None, me: str,
              ) -> tuple[GroupState | None, GroupState] | None:
        """Verify and adopt a received group history (:func:`cli.session.group_chain.merge`).

        Args:
            chain: consecutive signed states, oldest first (the newest is adopted).
            sender: the user whose device sent it; ``None`` for a trusted source (the
                account's own primary at linking: its state becomes the root).
            me: this account's user id.

        Returns:
            ``(previous or None, new)`` if adopted; ``None`` if nothing is newer than held.

        Raises:
            GroupForked: a conflicting state for a held version; the group is marked
                ``forked`` (the held chain stays).
            GroupStateRejected: see :func:`cli.session.group_chain.merge`.
        """
        if not chain:
            raise GroupStateRejected("empty group history")
        record = self.groups.get(parse_state(chain[-1]).group_id)
        if record is None and sender is None:
            new_chain = merge(None, chain[-1:], sender=None, me=me)  # a trusted root
        else:
            try:
                new_chain = merge(record.chain if record else None, chain, sender=sender,
                                  me=me)
            except GroupForked as exc:
                if record is not None:
                    record.forked = exc.other.version
                raise
        if not new_chain:
            return None
        if record is None:
            self.groups[new_chain[-1][0].group_id] = GroupRecord(new_chain)
            return None, new_chain[-1][0]
        previous = record.state
        record.chain.extend(new_chain)
        del record.chain[:-MAX_CHAIN]
        return previous, record.state

    # ------------------------------------------------------------ outbound

    def outbound_for(
        self, group_id: bytes, recipients: set[tuple[str, int, bytes]], now: float | None = None,
    ) -> tuple[OutboundSession, bool]:
        """This device's session for ``group_id``, rotated if needed.

        Rotates when expired or when a device holding the key is not among
        ``recipients`` (``(user_id, device_id, curve25519)`` of every current member
        device except this one).

        Returns:
            ``(session, rotated)``; ``rotated`` is True for a new session.
        """
        now = time.time() if now is None else now
        out = self.outbound.get(group_id)
        if out is not None and not out.expired(now) and out.shared <= recipients:
            return out, False
        out = self.outbound[group_id] = OutboundSession(vodozemac.GroupSession(), now)
        return out, True

    def rotate(self, group_id: bytes) -> None:
        """Forget this device's outbound session (a new one is made on the next send)."""
        self.outbound.pop(group_id, None)

    # ------------------------------------------------------------ inbound

    def add_inbound(
        self, group_id: bytes, sender_user: str, sender_device: int, session_id: str,
        session_key: str,
    ) -> bool:
        """Store a received session key; keep an already held copy that starts earlier.

        Returns:
            True if stored (new, or earlier than the held copy).

        Raises:
            GroupDecryptError: the key is malformed, does not match ``session_id``, or
                the sender already gave this session for another group.
        """
        try:
            inbound = vodozemac.InboundGroupSession(vodozemac.SessionKey(session_key))
        except (ValueError, TypeError) as exc:
            raise GroupDecryptError(f"malformed group session key: {exc}") from exc
        if inbound.session_id != session_id:
            raise GroupDecryptError("group session key does not match its session id")
        key = (sender_user, sender_device, session_id)
        held = self.inbound.get(key)
        if held is not None:
            if held[0] != group_id:
                raise GroupDecryptError("this group session was given for another group")
            if held[1].first_known_index <= inbound.first_known_index:
                return False
        self.inbound[key] = (group_id, inbound)
        self.inbound.move_to_end(key)
        while len(self.inbound) > MAX_INBOUND:
            gone, _ = self.inbound.popitem(last=False)
            self.decrypted.pop(gone, None)
        return True

    def decrypt(self, sender_user: str, sender_device: int, body: bytes) -> tuple[bytes, bytes]:
        """Decrypt an envelope body of kind ``group``.

        Returns:
            ``(group_id, inner payload plaintext)``.

        Raises:
            GroupDecryptError: malformed, no key from that sender device for the
                session (e.g. sent before this device joined, or after it left),
                the Megolm message does not verify, or its index was decrypted
                before (a replay: :mod:`cli.session.replay`).
        """
        session_id, message = split_body(body)
        key = (sender_user, sender_device, session_id)
        held = self.inbound.get(key)
        if held is None:
            raise GroupDecryptError("no group session key from this sender device")
        group_id, inbound = held
        try:
            decrypted = inbound.decrypt(message)
        except ValueError as exc:
            raise GroupDecryptError(f"group message does not decrypt: {exc}") from exc
        plain = decrypted.plaintext
        if not self.decrypted.setdefault(key, IndexWindow()).add(decrypted.message_index):
            raise GroupDecryptError(f"replayed group message (index {decrypted.message_index} "
                                    "of its session was decrypted before)")
        try:
            m = msgpack.unpackb(plain, raw=False, strict_map_key=True, ext_hook=refuse_ext,
                                max_ext_len=0, max_map_len=8)
            inner_group, inner = m["group_id"], m["payload"]
        except (ValueError, KeyError, TypeError, msgpack.UnpackException) as exc:
            raise GroupDecryptError(f"malformed group plaintext: {exc}") from exc
        if m.get("v") != BODY_VERSION or inner_group != group_id or not isinstance(inner, bytes):
            raise GroupDecryptError("group plaintext names another group or version")
        return group_id, inner

    # ------------------------------------------------------------ persistence

    def to_map(self, pickle_key: bytes) -> dict:
        """Msgpack-ready form; Megolm sessions pickled under the 32-byte ``pickle_key``."""
        return {
            "groups": [[r.signed.body, r.signed.signature] for r in self.groups.values()],
            "chains": [[[s.body, s.signature] for _, s in r.chain] for r in self.groups.values()],
            "forked": [[gid, r.forked] for gid, r in self.groups.items() if r.forked is not None],
            "outbound": [[gid, o.session.pickle(pickle_key), o.created_at,
                          [list(s) for s in o.shared]] for gid, o in self.outbound.items()],
            "inbound": [[*k, gid, s.pickle(pickle_key)] for k, (gid, s) in self.inbound.items()],
            "decrypted": [[*k, w.to_list()] for k, w in self.decrypted.items()
                          if k in self.inbound],
        }

    @classmethod
    def from_map(cls, m: dict | None, pickle_key: bytes) -> GroupStore:
        """Inverse of :meth:`to_map` (``None``: a state saved before groups existed).

        Raises:
            ValueError: corrupt data (pickles, group-state shapes; signatures were checked
                when the states were adopted, and the store is sealed).
        """
        store = cls()
        if not m:
            return store
        if "chains" in m:
            for chain in m["chains"]:
                signed = [SignedGroupState(body, sig) for body, sig in chain]
                chain = [(parse_state(s, verified=True), s) for s in signed]
                store.groups[chain[-1][0].group_id] = GroupRecord(chain)
        else:  # saved before chains: each state is the root this device trusts
            for body, sig in m["groups"]:
                signed = SignedGroupState(body, sig)
                state = parse_state(signed, verified=True)
                store.groups[state.group_id] = GroupRecord([(state, signed)])
        for gid, version in m.get("forked", []):
            if gid in store.groups:
                store.groups[gid].forked = version
        for gid, pickle, created, shared in m["outbound"]:
            store.outbound[gid] = OutboundSession(
                vodozemac.GroupSession.from_pickle(pickle, pickle_key), created,
                {(u, d, k) for u, d, k in shared})
        for user, device, sid, gid, pickle in m["inbound"]:
            store.inbound[(user, device, sid)] = (
                gid, vodozemac.InboundGroupSession.from_pickle(pickle, pickle_key))
        for user, device, sid, window in m.get("decrypted", []):  # absent before replay checks
            if (user, device, sid) in store.inbound:
                store.decrypted[(user, device, sid)] = IndexWindow.from_list(window)
        return store


# ------------------------------------------------------------------ wire forms


def encrypt(out: OutboundSession, group_id: bytes, inner: bytes) -> bytes:
    """One Megolm encryption of an inner payload: the envelope body of kind ``group``."""
    plain = msgpack.packb({"v": BODY_VERSION, "group_id": group_id, "payload": inner},
                          use_bin_type=True)
    message = out.session.encrypt(plain)
    return bytes([BODY_VERSION]) + b64decode(out.session_id) + message.to_bytes()


def split_body(body: bytes) -> tuple[str, vodozemac.MegolmMessage]:
    """``(session_id, Megolm message)`` of a ``group`` envelope body.

    Raises:
        GroupDecryptError: malformed.
    """
    if len(body) < 2 + SESSION_ID_SIZE or body[0] != BODY_VERSION:
        raise GroupDecryptError("not a group message body")
    session_id = b64encode(body[1:1 + SESSION_ID_SIZE]).decode().rstrip("=")
    try:
        return session_id, vodozemac.MegolmMessage.from_bytes(body[1 + SESSION_ID_SIZE:])
    except ValueError as exc:
        raise GroupDecryptError(f"malformed Megolm message: {exc}") from exc
