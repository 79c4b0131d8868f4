"""The write queue of a node connection is bounded by bytes, not only by frames."""

from __future__ import annotations

import trio
import trio.testing

from relay.net.writer import FrameWriter


def _writer(max_bytes: int) -> FrameWriter:
    # the WebSocket is only used by the writer task (FrameWriter.run), not started here
    return FrameWriter(None, "test", on_progress=lambda: None,  # type: ignore[arg-type]
                       on_remote_close=lambda reason: None, max_bytes=max_bytes)


async def test_push_is_refused_past_the_byte_bound() -> None:
    w = _writer(1000)
    assert w.push_nowait(b"a" * 600)
    assert not w.push_nowait(b"b" * 600)  # 1200 bytes: over, though 2 frames are far below 256
    assert w.push_nowait(b"c" * 400)
    assert (w.unwritten, w.unwritten_bytes) == (2, 1000)
    assert not w.push_nowait(b"d")


async def test_one_frame_larger_than_the_bound_fits_an_empty_queue() -> None:
    w = _writer(1000)
    with trio.fail_after(1):
        await w.send(b"x" * 5000)
    assert w.unwritten_bytes == 5000


async def test_send_waits_for_room_in_bytes(autojump_clock) -> None:
    w = _writer(1000)
    await w.send(b"a" * 900)
    with trio.move_on_after(10) as waited:
        await w.send(b"b" * 200)
    assert waited.cancelled_caught  # backpressure: nothing was written meanwhile
    assert (w.unwritten, w.unwritten_bytes) == (1, 900)
    with trio.move_on_after(10) as waited:
        await w.send_many([b"c" * 50, b"d" * 50, b"e" * 200])
    assert waited.cancelled_caught and (w.unwritten, w.unwritten_bytes) == (3, 1000)
