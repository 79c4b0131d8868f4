"""Account-signed group state: build, sign, verify, and the rules for accepting an update.

A group state ``{group_id (16 random bytes), name, members, admins, version,
creator, signer, issued_at, prev}`` is msgpack, signed with an admin's *account*
key (pynacl Ed25519 over ``GROUP_STATE_CONTEXT || body``). The signer's
user_id is self-certifying, so anyone can check the signature offline.
``prev`` is the hash of the previous version's signed body (empty for version
1): the versions form a hash chain from the creator-signed version 1
(:mod:`cli.session.group_chain` holds the rules for accepting a state with its chain).
A single state is accepted after another (:func:`check_update`) only if

* the signature verifies under ``signer`` and the fields are well formed
  (admins are members, no repeats, sorted, at most :data:`MAX_MEMBERS` members);
* the ``group_id`` and ``creator`` are unchanged, the version is one more, the
  ``prev`` hash names the previous body and the signer is an admin of the
  *previous* state -- or the change is the signer *leaving* (:func:`is_leave`):
  a member (admin or not) may sign the next version when it differs from the
  previous one only by removing itself (from members and admins; another admin
  must remain, as every state needs one).
"""

from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass

import msgpack
import nacl.exceptions
import nacl.signing

from cli.errors import ClientError
from cli.session.crypto import account_user_id
from relay.protocol import is_user_id, key_from_user_id
from relay.protocol.codec import refuse_ext

GROUP_STATE_CONTEXT = b"wa-relay group-state v1\x00"
GROUP_ID_SIZE = 16
MAX_MEMBERS = 512  # users; a group_send reaches at most 1024 devices (node limit)
MAX_NAME = 100
STATE_HASH_SIZE = 32


class GroupError(ClientError):
    """A group operation cannot be done (unknown group, not an admin, no account key, ...)."""


class GroupStateRejected(GroupError):
    """A received group state failed its signature, shape or update checks."""


class GroupDecryptError(GroupError):
    """A group message cannot be decrypted (no key from that sender, corrupt, forged)."""


# ------------------------------------------------------------------ group state


@dataclass(frozen=True, slots=True)
class GroupState:
    """One version of a group. ``members`` and ``admins`` are sorted user_ids."""

    group_id: bytes
    name: str
    members: tuple[str, ...]
    admins: tuple[str, ...]
    version: int
    creator: str
    signer: str
    issued_at: int
    prev: bytes = b""

    @property
    def hex_id(self) -> str:
        """The group id as 32 hex characters (what ``--json`` shows)."""
        return self.group_id.hex()

    def encode(self) -> bytes:
        """The signed msgpack body."""
        return msgpack.packb({
            "group_id": self.group_id, "name": self.name, "members": list(self.members),
            "admins": list(self.admins), "version": self.version, "creator": self.creator,
            "signer": self.signer, "issued_at": self.issued_at, "prev": self.prev,
        }, use_bin_type=True)


@dataclass(frozen=True, slots=True)
class SignedGroupState:
    """A group state body and the signer's 64-byte account-key signature."""

    body: bytes
    signature: bytes

    def to_map(self) -> dict:
        """``{body, signature}`` for embedding in a payload."""
        return {"body": self.body, "signature": self.signature}

    def digest(self) -> bytes:
        """The 32-byte hash the next version names as ``prev``: BLAKE2b-256 of the body
        (the body is what the signature covers)."""
        return state_hash(self.body)


def state_hash(body: bytes) -> bytes:
    """BLAKE2b-256 (personalised ``wa-group-state``) of a signed group-state body."""
    return hashlib.blake2b(body, digest_size=STATE_HASH_SIZE, person=b"wa-group-state").digest()


def new_group_id() -> bytes:
    """16 random bytes."""
    return os.urandom(GROUP_ID_SIZE)


def make_state(
    account_key: nacl.signing.SigningKey, *, group_id: bytes, name: str, members: list[str],
    admins: list[str], version: int, creator: str, prev: bytes = b"",
) -> tuple[GroupState, SignedGroupState]:
    """Build and sign a group state with ``account_key`` (the signer); ``prev`` is the
    :meth:`SignedGroupState.digest` of version ``version - 1`` (empty for version 1).

    Raises:
        GroupStateRejected: the fields are malformed (see :func:`check_shape`).
    """
    signer = account_user_id(account_key)
    state = GroupState(group_id, name, tuple(sorted(set(members))), tuple(sorted(set(admins))),
                       version, creator, signer, int(time.time()), prev)
    check_shape(state)
    body = state.encode()
    return state, SignedGroupState(body, account_key.sign(GROUP_STATE_CONTEXT + body).signature)


def check_shape(state: GroupState) -> None:
    """Raise :class:`GroupStateRejected` unless the fields are well formed."""
    if len(state.group_id) != GROUP_ID_SIZE:
        raise GroupStateRejected("group id must be 16 bytes")
    if not 0 < len(state.name) <= MAX_NAME or not state.name.strip():
        raise GroupStateRejected(f"group name must be 1 to {MAX_NAME} characters")
    if not 0 < len(state.members) <= MAX_MEMBERS or len(set(state.members)) != len(state.members):
        raise GroupStateRejected(f"a group has 1 to {MAX_MEMBERS} distinct members")
    if not all(is_user_id(u) for u in (*state.members, state.creator, state.signer)):
        raise GroupStateRejected("malformed user id in group state")
    if not state.admins or not set(state.admins) <= set(state.members):
        raise GroupStateRejected("a group needs admins, and every admin must be a member")
    if state.version < 1:
        raise GroupStateRejected("group version must be >= 1")
    if state.prev and len(state.prev) != STATE_HASH_SIZE:
        raise GroupStateRejected(f"prev must be a {STATE_HASH_SIZE}-byte hash")
    if state.version == 1 and state.prev:
        raise GroupStateRejected("version 1 of a group has no previous version")


def parse_state(signed: SignedGroupState, *, verified: bool = False) -> GroupState:
    """Verify the signature and shape of a signed group state (not its history).

    ``verified``: the signature was checked before (a state read back from this
    device's own sealed store): only the shape is checked.

    Raises:
        GroupStateRejected: bad signature, not msgpack, missing or mistyped fields.
    """
    try:
        m = msgpack.unpackb(signed.body, raw=False, strict_map_key=True, ext_hook=refuse_ext,
                            max_map_len=16, max_array_len=MAX_MEMBERS)
        state = GroupState(
            m["group_id"], m["name"], tuple(m["members"]), tuple(m["admins"]), m["version"],
            m["creator"], m["signer"], m["issued_at"], m.get("prev", b""),
        )
    except (ValueError, KeyError, TypeError, msgpack.UnpackException) as exc:
        raise GroupStateRejected(f"malformed group state: {exc}") from exc
    if not (isinstance(state.group_id, bytes) and isinstance(state.name, str)
            and isinstance(state.prev, bytes)
            and type(state.version) is int and type(state.issued_at) is int
            and all(isinstance(u, str) for u in (*state.members, *state.admins,
                                                  state.creator, state.signer))):
        raise GroupStateRejected("group state fields have wrong types")
    check_shape(state)
    if list(state.members) != sorted(state.members) or list(state.admins) != sorted(state.admins):
        raise GroupStateRejected("group state lists are not sorted")
    if verified:
        return state
    try:
        nacl.signing.VerifyKey(key_from_user_id(state.signer)).verify(
            GROUP_STATE_CONTEXT + signed.body, signed.signature)
    except (nacl.exceptions.BadSignatureError, ValueError) as exc:
        raise GroupStateRejected("group state signature does not verify") from exc
    return state


def check_update(previous: GroupState, previous_signed: SignedGroupState,
                 new: GroupState) -> None:
    """Check that ``new`` may directly follow ``previous`` (whose signed form is
    ``previous_signed``) in a group's hash chain.

    Raises:
        GroupStateRejected: another group or creator, a version that is not one more,
            a ``prev`` hash that does not name the previous body, or a signer who is
            not an admin of the previous state (unless ``new`` is its signer leaving,
            :func:`is_leave`).
    """
    if new.group_id != previous.group_id or new.creator != previous.creator:
        raise GroupStateRejected("group id or creator changed")
    if new.version != previous.version + 1:
        raise GroupStateRejected(
            f"group version must grow by one (have {previous.version}, got {new.version})")
    if new.prev != previous_signed.digest():
        raise GroupStateRejected(f"version {new.version} does not name version "
                                 f"{previous.version} as its previous one")
    if new.signer not in previous.admins and not is_leave(previous, new):
        raise GroupStateRejected(f"change signed by {new.signer[:12]}, who is not an admin")


def check_genesis(first: GroupState) -> None:
    """Check that ``first`` can start a chain: version 1, signed by its creator, an admin.

    Raises:
        GroupStateRejected: otherwise.
    """
    if first.version != 1:
        raise GroupStateRejected(
            f"the group's history must start at version 1 (got version {first.version})")
    if first.signer != first.creator or first.creator not in first.admins:
        raise GroupStateRejected("version 1 of a group must be signed by its creator")


def is_leave(previous: GroupState, new: GroupState) -> bool:
    """Whether ``new`` is ``previous`` minus its signer (a member leaving on its own)."""
    me = new.signer
    return (me in previous.members and new.name == previous.name
            and set(new.members) == set(previous.members) - {me}
            and set(new.admins) == set(previous.admins) - {me})
