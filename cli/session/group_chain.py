"""A group's history as a hash chain, and the rules for accepting a received chain.

Every version of a group state names the hash of the previous version's
signed body (``prev``, :mod:`cli.group_state`); version 1 is signed by the
creator. A device keeps the chain of versions it has verified, from a *root*
it trusts (version 1, or for a companion device the state its own primary gave
it when linking) to the current state.

A received chain (a list of consecutive signed states, oldest first) is
accepted (:func:`merge`) when:

* every link holds (:func:`cli.group_state.check_update`: same group and creator,
  version one more, ``prev`` names the previous body, signed by an admin of the
  previous version);
* for a group this device does not hold: it starts at version 1, signed by the
  creator (:func:`cli.group_state.check_genesis`), and it came from the member
  who added this account (the signer of the last version that made it a member,
  :func:`adder_of`); so an ex-member cannot sign a fork and hand it to a
  newcomer, and nobody can replay an old chain to a newcomer in someone else's
  name;
* for a group this device holds: every received version it also holds is
  identical, and the first newer version links to its current one.

Two different states for one version are a *fork*: :class:`GroupForked` is
raised, the held chain is kept, and the caller shows the fork (it is never
adopted silently). An ex-admin can still sign a fork from a version where it
was an admin (nothing offline can tell two validly signed branches apart), but
only a device that meets both branches can tell, and it does.

Sizes: a chain holds at most :data:`MAX_CHAIN` versions; members that already
hold the group are sent the last :data:`CHAIN_TAIL` versions, a newcomer the
whole chain.
"""

from __future__ import annotations

from cli.session.group_state import (
    GroupState,
    GroupStateRejected,
    SignedGroupState,
    check_genesis,
    check_update,
    parse_state,
)

__all__ = ["CHAIN_TAIL", "MAX_CHAIN", "Chain", "GroupForked", "adder_of", "merge",
           "parse_chain", "tail"]

MAX_CHAIN = 1024
"""Versions a received or held chain may hold."""
CHAIN_TAIL = 16
"""Versions sent to members who already hold the group (they need only the new ones)."""

Chain = list[tuple[GroupState, SignedGroupState]]
"""Consecutive verified versions of one group, oldest first."""


class GroupForked(GroupStateRejected):
    """Two different validly signed states claim the same version of a group.

    Attributes:
        held: this device's state at that version (or the newest it holds).
        other: the received state that conflicts with it.
    """

    def __init__(self, message: str, held: GroupState, other: GroupState) -> None:
        super().__init__(message)
        self.held = held
        self.other = other


def parse_chain(signed: list[SignedGroupState]) -> Chain:
    """Verify every state of ``signed`` and every link between neighbours.

    Raises:
        GroupStateRejected: empty, longer than :data:`MAX_CHAIN`, a bad state, or a
            broken link.
    """
    if not signed:
        raise GroupStateRejected("empty group history")
    if len(signed) > MAX_CHAIN:
        raise GroupStateRejected(f"group history longer than {MAX_CHAIN} versions")
    chain: Chain = []
    for s in signed:
        state = parse_state(s)
        if chain:
            check_update(chain[-1][0], chain[-1][1], state)
        chain.append((state, s))
    return chain


def adder_of(chain: Chain, user_id: str) -> str | None:
    """The signer of the last version in ``chain`` that made ``user_id`` a member (the
    creator if it was a member from version 1); ``None`` if not a member at the end."""
    if user_id not in chain[-1][0].members:
        return None
    for i in range(len(chain) - 1, -1, -1):
        state = chain[i][0]
        if i == 0 or user_id not in chain[i - 1][0].members:
            return state.signer
    return None  # pragma: no cover (the loop always returns)


def merge(held: Chain | None, received: list[SignedGroupState], *, sender: str | None,
          me: str) -> Chain:
    """The versions of ``received`` to append to ``held`` (``None``: group unknown here).

    Args:
        held: this device's verified chain of the group, or ``None``.
        received: the chain that came in a payload, oldest first.
        sender: the user whose device sent it (``None``: a source this device trusts
            already, its own primary at linking).
        me: this account's user id.

    Returns:
        The new versions, oldest first (empty: nothing newer than held). For an
        unknown group, the whole received chain (the caller stores it).

    Raises:
        GroupForked: a received version differs from the held one of that number.
        GroupStateRejected: broken chain, no version 1 for an unknown group, not
            sent by the member who added this account, or a gap after the held one.
    """
    chain = parse_chain(received)
    if held is None:
        if chain[0][0].version == 1 or sender is not None:
            check_genesis(chain[0][0])
        elif chain[0][0].signer not in chain[0][0].admins:
            raise GroupStateRejected("group state signed by a non-admin")
        if sender is not None:
            adder = adder_of(chain, me)
            if adder is not None and adder != sender:
                raise GroupStateRejected(
                    f"a group this device does not know yet is accepted only from the "
                    f"member who added it ({adder[:12]}), not from {sender[:12]}")
        return chain
    if chain[0][0].group_id != held[0][0].group_id:
        raise GroupStateRejected("the history is of another group")
    root, head = held[0][0].version, held[-1][0].version
    for state, signed in chain:
        if root <= state.version <= head:
            mine_state, mine = held[state.version - root]
            if signed.body != mine.body:
                raise GroupForked(
                    f"group {state.name!r} forked at version {state.version}: held a state "
                    f"signed by {mine_state.signer[:12]}, got one signed by "
                    f"{state.signer[:12]}", mine_state, state)
    newer = [(s, g) for s, g in chain if s.version > head]
    if not newer:
        return []
    first, _ = newer[0]
    if first.version != head + 1:
        raise GroupStateRejected(f"group history has a gap: hold version {head}, the "
                                 f"received versions start at {first.version}")
    try:
        check_update(held[-1][0], held[-1][1], first)
    except GroupStateRejected as exc:
        if first.prev != held[-1][1].digest():  # it extends another branch
            raise GroupForked(f"group {first.name!r} forked before version {first.version}: "
                              f"{exc}", held[-1][0], first) from exc
        raise
    return newer


def tail(chain: Chain, n: int | None = CHAIN_TAIL) -> list[SignedGroupState]:
    """The last ``n`` signed versions of ``chain`` (all if ``n`` is ``None``)."""
    part = chain if n is None else chain[-n:]
    return [s for _, s in part]
