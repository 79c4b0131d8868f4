"""What the client API returns: send results and the events of a receive stream."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class SendResult:
    """Outcome of a send: ``status`` is ``"stored"`` (durable at every recipient home)
    or ``"queued"`` (durable in the sender home's outbox); ``to`` is the recipient user_id."""

    msg_id: bytes
    status: str
    to: str


@dataclass(frozen=True, slots=True)
class Message:
    """A decrypted message. ``direction`` is ``"in"``, or ``"out"`` for a copy of what
    another device of this account sent to ``peer``. ``ts`` is the sender's clock (ms).
    ``from_name`` is the local contact alias of the sender if any, else ``declared_name``.
    For a group message, ``group`` is the group's name and ``group_id`` its id in hex
    (``peer`` is the group id too)."""

    msg_id: bytes
    sender_user: str
    sender_device: int
    direction: str
    peer: str
    ts: int
    type: str
    text: str
    from_name: str
    declared_name: str
    group: str | None = None
    group_id: str | None = None
    extra: dict | None = None
    """The kind-specific fields (``reply_to``, ``reaction``, ``edit_of``, ``deleted``,
    ``receipt``, ``typing``, ``expires_in``; :func:`cli.features.effects.event_extra`)."""


@dataclass(frozen=True, slots=True)
class Requested:
    """A message request: a stranger's message (``kind`` ``"user"``, ``key`` its user_id)
    or a group invitation from a non-contact, or a message in such a group (``kind``
    ``"group"``, ``key`` the group id in hex, ``group`` its name) waits until accepted
    (``wa-cli requests``). ``msg_id`` (hex) is the held message, ``None`` for the
    invitation itself."""

    key: str
    kind: str
    sender_user: str
    declared_name: str
    group: str | None
    msg_id: str | None


@dataclass(frozen=True, slots=True)
class BacklogDone:
    """Marker: everything queued at ``sync`` time has been yielded (the node sent ``synced``)."""


@dataclass(frozen=True, slots=True)
class Bounce:
    """The home's outbox finally failed to deliver ``msg_id`` to ``user_id`` (``code``).
    ``resent_status`` is the status of the automatic re-encrypted resend, if one was made;
    ``error`` says why a resend failed."""

    msg_id: bytes
    user_id: str
    code: str
    message: str
    resent_status: str | None = None
    error: str | None = None


@dataclass(frozen=True, slots=True)
class Dropped:
    """An envelope that was acknowledged but not shown: undecryptable, forged or malformed."""

    msg_id: bytes
    sender_user: str
    sender_device: int
    reason: str


@dataclass(frozen=True, slots=True)
class DevicesChanged:
    """A contact (or this account) published a new, verified device list.

    ``added`` and ``removed`` hold ``(device_id, name)`` pairs relative to the list
    cached before; ``version`` is the new list's version; ``name`` the local alias
    of ``user_id`` (or ``""``)."""

    user_id: str
    name: str
    version: int
    added: tuple[tuple[int, str], ...]
    removed: tuple[tuple[int, str], ...]


@dataclass(frozen=True, slots=True)
class GroupChanged:
    """A verified new group state was adopted (a receive event).

    ``actor`` signed it; ``added``/``removed`` are user_ids relative to the
    previous state (everyone is ``added`` for a group seen for the first time);
    ``left`` is True when this account is no longer a member."""

    group_id: str
    name: str
    version: int
    actor: str
    added: tuple[str, ...]
    removed: tuple[str, ...]
    left: bool


@dataclass(frozen=True, slots=True)
class GroupForkSeen:
    """Two different signed states claim one version of a group (:mod:`cli.session.group_chain`):
    the held history is kept and nothing more is sent to the group. ``held_signer`` and
    ``other_signer`` signed the two states of ``version``; ``sender`` sent the other one."""

    group_id: str
    name: str
    version: int
    held_signer: str
    other_signer: str
    sender: str


@dataclass(frozen=True, slots=True)
class Kept:
    """Marker of ``receive(keep=True)``: ``count`` events of the batch just processed were
    kept in the device's inbox (:class:`cli.session.inbox.Inbox`, durable before the batch was
    acknowledged) instead of being yielded; show them from there."""

    count: int


Event = (Message | BacklogDone | Bounce | Dropped | DevicesChanged | GroupChanged | GroupForkSeen
         | Kept | Requested)
"""One item of :meth:`cli.client.Client.receive`."""


