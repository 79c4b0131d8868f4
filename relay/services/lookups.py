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
from relay.protocol import ErrorCode
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
    ``expected``, with ``frame``'s id); ``None`` if this node is the home.

    Raises:
        RelayError: ``bad_request`` (malformed user id, or a peer asking a node
            that is not the home), ``unavailable``, the home's refusal, or
            ``internal`` (an answer of another type).
    """
    node.directory.check_user_id(user_id)
    home = node.ring.home(user_id)
    if home.id == node.id:
        return None
    if from_peer:
        raise RelayError(ErrorCode.BAD_REQUEST, "user is not homed at this node")
    return await ask_peer(node.federation, home.id, frame, expected, PEER_REQUEST_TIMEOUT,
                          holder="home node")


async def get_devices(
    node: Node, frame: GetDevices, *, user_id: str | None, peer_id: str | None
) -> Devices:
    """Serve ``get_devices`` for an authenticated device of ``user_id`` or for peer ``peer_id``.

    Raises:
        RelayError: see :func:`ask_home`; ``unknown_user``; ``bad_request`` if a
            peer names a watcher not homed at that peer.
        StorageFull: the watcher could not be recorded.
    """
    watcher = user_id  # a device's own value of the field is ignored
    if peer_id is not None:
        watcher = frame.watcher
        if watcher is not None:
            node.directory.check_homed_at(watcher, peer_id, "watcher")
    ask = GetDevices(id=frame.id, user_id=frame.user_id, watcher=watcher)
    answer = await ask_home(node, ask, frame.user_id, Devices, from_peer=peer_id is not None)
    if answer is not None:
        return answer
    signed = await node.changes.fetch(frame.user_id, watcher)
    return Devices(id=frame.id, device_list=signed)


async def claim_keys(node: Node, frame: ClaimKeys, *, from_peer: bool) -> Claimed:
    """Serve ``claim_keys``; the home pushes ``key_count`` to devices running low.

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
