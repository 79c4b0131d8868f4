"""Group changes beside create/add/remove (:mod:`cli.features.group_messaging`): rename, promote, leave.

Each is a new account-signed group state sent pairwise to the old and new members
(:func:`cli.features.group_messaging.publish_state`), so it needs the account key (the
primary device). Rename and promote are an admin's; *leave* is any member's: the
state it signs is the next version of the group's hash chain (version + 1, ``prev`` the
held head, :mod:`cli.session.group_chain`) and differs from the held one only by the
leaver's absence (:func:`cli.session.group_state.is_leave`), which every member accepts. A group keeps an
admin: the last admin promotes someone before leaving. The leaver's sender key is
dropped and the others rotate theirs (the leaver reads nothing sent afterwards).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from cli.features.group_messaging import _publish as publish_state
from cli.features.group_messaging import _require_admin as require_admin
from cli.session.group_state import GroupError, GroupState

if TYPE_CHECKING:
    from cli.session.session import Session

__all__ = ["leave_group", "promote_member", "rename_group"]


async def rename_group(client: Session, group: str, name: str) -> GroupState:
    """Rename ``group`` (name or id); tell every member.

    Raises:
        NotGroupAdmin, GroupError (unknown group, bad or taken name), RelayError, SendFailed.
    """
    record = client.state.groups.find(group)
    require_admin(client, record)
    old = record.state
    if any(r.state.name == name and r.state.group_id != old.group_id
           for r in client.state.groups.groups.values()):
        raise GroupError(f"you already have a group called {name!r}")
    return await publish_state(client, record, list(old.members), list(old.admins), name,
                               old.group_id, old.creator)


async def promote_member(client: Session, group: str, user_id: str) -> GroupState:
    """Make member ``user_id`` an admin of ``group``.

    Raises:
        NotGroupAdmin, GroupError (unknown group, not a member, already admin), RelayError.
    """
    record = client.state.groups.find(group)
    require_admin(client, record)
    old = record.state
    if user_id not in old.members:
        raise GroupError(f"{user_id} is not a member of {old.name!r}")
    if user_id in old.admins:
        raise GroupError(f"{user_id} is already an admin of {old.name!r}")
    return await publish_state(client, record, list(old.members), [*old.admins, user_id],
                               old.name, old.group_id, old.creator)


async def leave_group(client: Session, group: str) -> GroupState:
    """Leave ``group``: sign and send the state without this account.

    Returns:
        The state after leaving (this account no longer in it).

    Raises:
        NotGroupAdmin: no account key on this device.
        GroupError: unknown group, not a member, the last admin of a group with other
            members (promote someone first), the only member (nothing to tell).
        RelayError, SendFailed, ConnectionLost.
    """
    state = client.state
    record = state.groups.find(group)
    require_admin(client, None)  # the account key; no admin role needed to leave
    old, me = record.state, state.user_id
    if me not in old.members:
        raise GroupError(f"you are not a member of {old.name!r}")
    admins = [a for a in old.admins if a != me]
    members = [m for m in old.members if m != me]
    if not members:
        raise GroupError(f"you are the only member of {old.name!r}")
    if not admins:
        raise GroupError(f"you are the last admin of {old.name!r}: promote someone first "
                         "('wa-cli group promote')")
    # the next version of the hash chain (prev = the held head), signed by the leaver;
    # publish_state rotates the sender key since a member left
    return await publish_state(client, record, members, admins, old.name, old.group_id,
                               old.creator)
