"""The node's own framing of outgoing binary messages (relay.net.wsio.frame_binary)
writes exactly what wsproto would, at every length encoding of RFC 6455 5.2."""

from __future__ import annotations

import os

import pytest
from wsproto.frame_protocol import FrameProtocol

from relay.net.wsio import frame_binary


@pytest.mark.parametrize("size", [0, 1, 125, 126, 127, 65535, 65536, 70000])
def test_frame_binary_is_what_wsproto_writes(size: int) -> None:
    proto = FrameProtocol(client=False, extensions=[])
    message = os.urandom(size)
    assert frame_binary([message]) == bytes(proto.send_data(message, True))


def test_frame_binary_concatenates_in_order() -> None:
    proto = FrameProtocol(client=False, extensions=[])
    messages = [os.urandom(n) for n in (3, 200, 0, 70000, 10)]
    assert frame_binary(messages) == b"".join(bytes(proto.send_data(m, True)) for m in messages)
    assert frame_binary([]) == b""
