"""Envelopes in wire form, and ``deliver`` frames built from them without re-encoding.

A device queue stores each envelope as the msgpack map that a ``deliver`` frame
carries (:func:`encode_envelope`); :func:`encode_deliver` builds a whole
``deliver {items: [{seq, envelope}]}`` frame by writing the small headers and
concatenating the stored bytes, so a queued envelope goes to the socket
without being decoded and encoded again. :func:`pack_deliveries` cuts a run of
queued envelopes into such frames, each at most ``max_frame`` bytes. Sans-I/O.
"""

from __future__ import annotations

from collections.abc import Sequence

import msgpack

from ._frame_base import Envelope
from .codec import refuse_ext

_HEADER_MAX = 1 + 2 + 8 + 3 + 1 + 6 + 5  # fixmap3, "t":"deliver", "id":0, "items":array32
_ITEM_MAX = 1 + 4 + 9 + 9  # fixmap2, "seq": uint64, "envelope"


def encode_envelope(env: Envelope) -> bytes:
    """The stored (and wire) form of an envelope: a msgpack map of its six fields."""
    return msgpack.packb(
        {"msg_id": env.msg_id, "sender_user": env.sender_user, "sender_device": env.sender_device,
         "ts": env.ts, "kind": env.kind, "body": env.body},
        use_bin_type=True,
    )


def decode_envelope(data: bytes) -> Envelope:
    """Inverse of :func:`encode_envelope`, for data this node stored itself.

    Raises:
        ValueError: ``data`` is not a stored envelope (corrupt storage).
    """
    try:
        m = msgpack.unpackb(data, raw=False, ext_hook=refuse_ext)
        env = Envelope(m["msg_id"], m["sender_user"], m["sender_device"], m["ts"], m["kind"],
                       m["body"])
    except (ValueError, msgpack.UnpackException, KeyError, TypeError) as exc:
        raise ValueError("corrupt stored envelope") from exc
    return env


BOUNCE_FROM_HOME = "home"
"""``origin`` of a bounce the sender's own home made from its own attempt (its outbox
was refused, or it refused the copy itself): the proof a client may resend on."""
BOUNCE_FROM_PEER = "peer"
"""``origin`` of a bounce another node handed the sender's home (``bounce`` frame):
unauthenticated end to end, a client reports it and resends nothing."""


def encode_bounce_body(code: str, message: str, user_id: str,
                       origin: str = BOUNCE_FROM_HOME) -> bytes:
    """The body of a ``bounce`` envelope: msgpack ``{code, message, user_id, origin}``
    (why the message to ``user_id`` was not delivered, and who says so:
    :data:`BOUNCE_FROM_HOME` or :data:`BOUNCE_FROM_PEER`, set by the sender's home)."""
    return msgpack.packb({"code": code, "message": message, "user_id": user_id,
                          "origin": origin}, use_bin_type=True)


def decode_bounce_body(body: bytes) -> tuple[str, str, str]:
    """``(code, message, user_id)`` of a ``bounce`` envelope's body.

    Raises:
        ValueError: not a bounce body.
    """
    code, message, user_id, _ = decode_bounce(body)
    return code, message, user_id


def decode_bounce(body: bytes) -> tuple[str, str, str, str]:
    """``(code, message, user_id, origin)`` of a ``bounce`` envelope's body (as a client
    reads it: ``origin`` is ``""`` when absent, which is not :data:`BOUNCE_FROM_HOME`).

    Raises:
        ValueError: not a bounce body (not a map of strings with those keys, ext types).
    """
    try:
        m = msgpack.unpackb(body, raw=False, max_map_len=16, ext_hook=refuse_ext)
        code, message, user_id = m["code"], m["message"], m["user_id"]
        origin = m.get("origin", "")
    except (ValueError, msgpack.UnpackException, KeyError, TypeError, AttributeError) as exc:
        raise ValueError("not a bounce body") from exc
    if not all(isinstance(v, str) for v in (code, message, user_id, origin)):
        raise ValueError("not a bounce body")
    return code, message, user_id, origin


def salvage_forward(payload: bytes) -> tuple[str, int, bytes] | None:
    """``(sender_user, sender_device, msg_id)`` of a stored ``forward`` frame that does not
    parse as a frame (read without frame limits: it is the node's own data), else
    ``None``: enough to bounce it to its sender."""
    try:
        m = msgpack.unpackb(payload, raw=False, strict_map_key=False, ext_hook=refuse_ext)
    except (ValueError, msgpack.UnpackException):
        return None
    if not isinstance(m, dict):
        return None
    user, dev, msg_id = m.get("sender_user"), m.get("sender_device"), m.get("msg_id")
    if isinstance(user, str) and type(dev) is int and isinstance(msg_id, bytes):
        return user, dev, msg_id
    return None


def deliver_size(envelope_sizes: Sequence[int]) -> int:
    """An upper bound, in bytes, of the ``deliver`` frame carrying envelopes of these sizes."""
    return _HEADER_MAX + sum(_ITEM_MAX + n for n in envelope_sizes)


def encode_deliver(items: Sequence[tuple[int, bytes]]) -> bytes:
    """The ``deliver`` push (id 0) of ``(seq, stored envelope)`` pairs, in the given order.

    The stored bytes are copied as they are (they must come from
    :func:`encode_envelope`); the result decodes to
    ``Deliver(id=0, items=[DeliverItem(seq, envelope), ...])``.
    """
    packer = msgpack.Packer(use_bin_type=True)
    parts = [b"\x83", packer.pack("t"), packer.pack("deliver"), packer.pack("id"), b"\x00",
             packer.pack("items"), packer.pack_array_header(len(items))]
    seq_key, env_key = packer.pack("seq"), packer.pack("envelope")
    for seq, raw in items:
        parts += (b"\x82", seq_key, packer.pack(seq), env_key, raw)
    return b"".join(parts)


def fits_alone(envelope: bytes, max_frame: int) -> bool:
    """True if a ``deliver`` frame of this one stored envelope is at most ``max_frame`` bytes."""
    return deliver_size((len(envelope),)) <= max_frame


def pack_deliveries(
    items: Sequence[tuple[int, bytes]], max_frame: int
) -> list[tuple[bytes, list[int]]]:
    """Cut ``(seq, stored envelope)`` pairs, in order, into ``deliver`` frames of at
    most ``max_frame`` bytes each.

    Returns:
        ``(frame bytes, seqs it carries)`` per frame, in order.

    Raises:
        ValueError: an envelope does not fit a frame on its own (check
            :func:`fits_alone` first).
    """
    frames: list[tuple[bytes, list[int]]] = []
    run: list[tuple[int, bytes]] = []
    size = _HEADER_MAX
    for seq, raw in items:
        need = _ITEM_MAX + len(raw)
        if _HEADER_MAX + need > max_frame:
            raise ValueError(f"the envelope of seq {seq} does not fit a frame of {max_frame} bytes")
        if run and size + need > max_frame:
            frames.append((encode_deliver(run), [s for s, _ in run]))
            run, size = [], _HEADER_MAX
        run.append((seq, raw))
        size += need
    if run:
        frames.append((encode_deliver(run), [s for s, _ in run]))
    return frames
