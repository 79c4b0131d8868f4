"""Directory reads a connection serves: ``get_devices`` and ``claim_keys``.

A device may ask any node; a node that is not the user's home forwards the
request over the peer link (``unavailable`` if that home is unreachable within
:data:`PEER_REQUEST_TIMEOUT`). A peer may only ask the user's home (no second
hop). ``get_devices`` also records the asking user as a watcher of the list at
the home (docs/protocol.md, "Device-list changes"): a device's own user, or the
``watcher`` field a forwarding node sets.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, TypeVar

from relay.errors import RelayError
from relay.protocol import ErrorCode, verify_device_list
from relay.protocol.frames import Claimed, ClaimKeys, Devices, Frame, GetDevices, KeyCount
from relay.services.federation import ask_peer

if TYPE_CHECKING:
    from relay.node import Node

PEER_REQUEST_TIMEOUT = 5.0

A = TypeVar("A", Devices, Claimed)


async def ask_home(
    node: Node, frame: Frame, user_id: str, expected: type[A], *, from_peer: bool
) -> A | None:
    """Forward a directory read to ``user_id``'s home and return its answer (of type
    ``expected``, with ``frame``'s id); ``None`` if this node is the home. During a
    reshape the home is where the user is served now (:class:`~relay.services.homes.Homes`):
    a peer's read for a user still being handed to this node goes on to the old home.

    An old home asked for a user it does not hold answers ``moved``; the new home
    then serves the user itself (a user created during the reshape).

    Raises:
        RelayError: ``bad_request`` (malformed user id, or a peer asking a node
            that is not the home), ``moved``, ``unavailable``, the home's refusal,
            or ``internal`` (an answer of another type).
    """
    node.directory.check_user_id(user_id)
    homes = node.homes
    home = homes.home(user_id)
    if home.id == node.id:
        return None
    if from_peer and not homes.incoming(user_id):  # one more hop only to an old home
        if homes.previous is not None:  # not held here: the new home is the home
            raise RelayError(ErrorCode.MOVED, f"the home of this user is {home.id}",
                             url=home.url, user_id=user_id)
        raise RelayError(ErrorCode.BAD_REQUEST, "user is not homed at this node")
    try:
        return await ask_peer(node.federation, home.id, frame, expected, PEER_REQUEST_TIMEOUT,
                              holder="home node")
    except RelayError as exc:
        if exc.code is ErrorCode.MOVED and homes.incoming(user_id):
            homes.done.add(user_id)  # the old home does not hold the user: served here
            return None
        raise


async def get_devices(
    node: Node, frame: GetDevices, *, user_id: str | None, peer_id: str | None
) -> Devices:
    """Serve ``get_devices`` for an authenticated device of ``user_id`` or for peer ``peer_id``.
    ``keys`` is honoured only when the asking user (the device's, or the watcher a peer
    names) is ``frame.user_id``: another user's answer has no ``keyed``.

    Raises:
        RelayError: see :func:`ask_home`; ``unknown_user``; ``bad_request`` if a
            peer names a watcher not homed at that peer; ``too_large`` if the home
            answered a list with more devices than this node allows.
        StorageFull: the watcher could not be recorded.
    """
    watcher = user_id  # a device's own value of the field is ignored
    if peer_id is not None:
        watcher = frame.watcher
        relayed = node.homes.outgoing.get(frame.user_id) == peer_id  # by the user's new home
        if watcher is not None and not relayed:
            node.directory.check_homed_at(watcher, peer_id, "watcher")
    # ``keyed`` only for the user's own devices: it told anyone which of a user's devices
    # came online since they were linked, without spending a key (docs/protocol.md)
    keys = bool(frame.keys) and watcher == frame.user_id or None
    ask = GetDevices(id=frame.id, user_id=frame.user_id, watcher=watcher, keys=keys)
    answer = await ask_home(node, ask, frame.user_id, Devices, from_peer=peer_id is not None)
    if answer is not None:  # a list from the user's home: this node checks its size too
        node.directory.check_device_count(verify_device_list(answer.device_list, frame.user_id))
        return answer
    signed = await node.changes.fetch(frame.user_id, watcher)
    keyed = None
    if keys:
        listed = [d.device_id for d in verify_device_list(signed, frame.user_id).devices]
        keyed = await node.directory.keyed_devices(frame.user_id, listed)
    return Devices(id=frame.id, device_list=signed, keyed=keyed)


async def claim_keys(node: Node, frame: ClaimKeys, *, from_peer: bool) -> Claimed:
    """Serve ``claim_keys``; the home pushes ``key_count`` to devices running low.
    (The claimer's ``claim_keys`` bucket is taken by the handler of the node it is
    connected to; a device's one-time-key budget applies at its home:
    :mod:`relay.services.claim_limits`.)

    Raises:
        RelayError: see :func:`ask_home` and :meth:`Directory.claim_keys`.
    """
    answer = await ask_home(node, frame, frame.user_id, Claimed, from_peer=from_peer)
    if answer is not None:
        return answer
    keys, low = await node.directory.claim_keys(frame.user_id, frame.device_ids)
    for device_id, count in low.items():
        session = node.registry.session(frame.user_id, device_id)
        if session is not None:
            session.push_nowait(KeyCount(id=0, otk_count=count))
    return Claimed(id=frame.id, keys=keys)
