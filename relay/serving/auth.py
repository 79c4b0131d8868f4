"""Checking a connection's ``auth`` (a device) and ``peer_auth`` (a node)
against its challenge nonce (docs/protocol.md, "Handshake").

The caller (:mod:`relay.serving.server`) then marks the connection authenticated.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from relay.errors import RelayError
from relay.protocol import ErrorCode, auth_message, peer_auth_message, verify_signature
from relay.protocol.frames import Auth, PeerAuth, PeerAuthOk
from relay.services.directory import BLOCK_MARK

if TYPE_CHECKING:
    from relay.node import Node


async def check_device_auth(node: Node, nonce: bytes, frame: Auth) -> None:
    """Check that ``frame`` signs ``nonce`` with a key in the user's current device list.

    Raises:
        RelayError: ``bad_request`` (not a user id), ``moved`` (homed elsewhere),
            ``unknown_user``, ``unknown_device``, ``unauthorized`` (bad signature, or
            an account blocked with ``wa-relay admin user block``).
    """
    node.directory.check_user_id(frame.user_id)
    await node.handoff.incoming.settle(frame.user_id)
    async with node.homes.hold([frame.user_id]):  # a handoff of the user in progress: wait
        node.directory.check_home(frame.user_id)
    if await node.storage.get_mark(BLOCK_MARK + frame.user_id) is not None:
        raise RelayError(ErrorCode.UNAUTHORIZED, "account blocked by the operator")
    _, parsed = await node.directory.require_device_list(frame.user_id)
    device = parsed.device(frame.device_id)
    if device is None:
        raise RelayError(ErrorCode.UNKNOWN_DEVICE, "device is not in the user's device list")
    message = auth_message(nonce, node.id, frame.user_id, frame.device_id)
    if not verify_signature(device.ed25519, message, frame.signature):
        raise RelayError(ErrorCode.UNAUTHORIZED, "device signature does not verify")


def check_peer_auth(node: Node, nonce: bytes, frame: PeerAuth) -> PeerAuthOk:
    """Check that ``frame`` signs ``nonce`` with the key of a cluster node other
    than this one.

    Returns:
        The ``peer_auth_ok`` answer: this node's signature over the peer's nonce.

    Raises:
        RelayError: ``unauthorized`` (unknown node, this node's own id, a nonce
            that is not 32 bytes, or a bad signature).
    """
    peer = node.homes.node(frame.node_id)  # either ring: a node being removed still drains
    if peer is None or peer.id == node.id or len(frame.nonce) != 32:
        raise RelayError(ErrorCode.UNAUTHORIZED, "unknown peer node")
    message = peer_auth_message(nonce, peer.id, node.id, node.ring.version)
    if not verify_signature(peer.public_key, message, frame.signature):
        raise RelayError(ErrorCode.UNAUTHORIZED, "peer signature does not verify")
    sig = node.signing_key.sign(
        peer_auth_message(frame.nonce, node.id, peer.id, node.ring.version)).signature
    return PeerAuthOk(id=frame.id, signature=sig)
