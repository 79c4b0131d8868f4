"""Sans-I/O core of the wa-relay protocol: frames, codec, limits, errors, identities.

No sockets, no Trio: the node and the client both wrap it. See docs/protocol.md.
"""

from .codec import DEFAULT_LIMITS, Limits, decode, encode
from .errors import (
    CloseCode,
    ErrorCode,
    LocalProtocolError,
    ProtocolError,
    RemoteProtocolError,
)
from .frames import *  # noqa: F403
from .frames import FRAME_TYPES, PROTOCOL_VERSION, SUPPORTED_VERSIONS, parse, to_wire
from .identity import (
    Device,
    DeviceList,
    auth_message,
    is_user_id,
    key_from_user_id,
    peer_auth_message,
    sign_device_list,
    user_id_from_key,
    verify_device_list,
    verify_signature,
)

__all__ = [
    "DEFAULT_LIMITS", "FRAME_TYPES", "PROTOCOL_VERSION", "SUPPORTED_VERSIONS",
    "CloseCode", "Device", "DeviceList", "ErrorCode", "Limits", "LocalProtocolError",
    "ProtocolError", "RemoteProtocolError", "auth_message", "decode", "encode",
    "is_user_id", "key_from_user_id", "parse", "peer_auth_message", "sign_device_list",
    "to_wire", "user_id_from_key", "verify_device_list", "verify_signature",
]


def read_frame(data: bytes | bytearray | str, limits: Limits = DEFAULT_LIMITS):
    """Decode and validate one WebSocket message into a frame (``decode`` + ``parse``).

    Raises:
        RemoteProtocolError: see :func:`decode` and :func:`parse`.
    """
    return parse(decode(data, limits), limits)


def write_frame(frame) -> bytes:
    """Encode a frame for a WebSocket binary message."""
    return encode(to_wire(frame))
