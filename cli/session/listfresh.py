"""Device-list freshness (issue 10, finding 4): expiry, no rollback, bounded growth,
and the list version carried inside every Olm payload.

A home that keeps serving an older, validly signed device list would keep a
removed (e.g. stolen) device alive. So:

* a list carries ``expires_at`` (:data:`LIST_LIFETIME` after signing); the
  primary re-signs its list (same devices, version + 1) when less than
  :data:`REFRESH_BEFORE` is left, on every connection
  (:func:`cli.features.devices.refresh_own_list`, from :func:`cli.client.open_client`);
* a client refuses an expired list, a list without expiry, a version lower than
  the highest it has seen for that account, and a version more than
  :data:`~relay.protocol.identity.MAX_VERSION_STEP` above the one it holds
  (:func:`problem`);
* every Olm payload carries ``dlv``, the sender's own account's list version as
  its device knows it (:func:`with_hint`); a receiver raises the highest
  version it has seen for the sender's account (:func:`note_hint`), refuses
  older lists from then on and fetches the newer one before it encrypts to
  that account again (:meth:`cli.client.Client.device_list`). A hint counts
  only from a device of that account's list (Olm authenticated it) and may
  raise the version by at most ``MAX_VERSION_STEP`` over the held list.

Pure functions over the state's maps; the state raises
:class:`cli.session.state.DeviceListRejected` with the text :func:`problem` returns.
"""

from __future__ import annotations

import msgpack

from relay.protocol import DeviceList
from relay.protocol.codec import refuse_ext
from relay.protocol.identity import MAX_VERSION_STEP

__all__ = ["HINT_FIELD", "LIST_LIFETIME", "REFRESH_BEFORE", "is_stale", "needs_refresh",
           "note_hint", "problem", "read_hint", "with_hint"]

LIST_LIFETIME = 30 * 24 * 3600
"""Seconds a signed device list is valid."""
REFRESH_BEFORE = LIST_LIFETIME // 2
"""The primary re-signs its list when less than this is left (seconds)."""
HINT_FIELD = "dlv"


def problem(parsed: DeviceList, held: DeviceList | None, highest: int, now: float) -> str | None:
    """Why a served list must be refused, or ``None`` if it may be cached.

    Args:
        parsed: the verified (signature, shape) list.
        held: the cached list of that account, if any.
        highest: the highest version seen for that account (lists and hints).
        now: seconds since the epoch.
    """
    who = parsed.user_id
    if parsed.expires_at is None:
        return f"device list of {who} (version {parsed.version}) carries no expiry"
    if parsed.expires_at < now:
        return (f"device list of {who} (version {parsed.version}) expired "
                f"{int(now - parsed.expires_at)} s ago")
    if parsed.version < highest:
        return (f"device list of {who} rolled back to version {parsed.version}: version "
                f"{highest} was seen")
    if held is not None and parsed.version > held.version + MAX_VERSION_STEP:
        return (f"device list of {who} jumps from version {held.version} to "
                f"{parsed.version} (at most {MAX_VERSION_STEP} at a time)")
    return None


def is_stale(held: DeviceList, highest: int, now: float) -> bool:
    """Whether a cached list must be fetched again before encrypting to it (expired,
    or older than a version seen since)."""
    return held.version < highest or (held.expires_at or 0) < now


def needs_refresh(own: DeviceList, now: float) -> bool:
    """Whether the primary should re-sign its own list now."""
    return own.expires_at is None or own.expires_at - now < REFRESH_BEFORE


def with_hint(plaintext: bytes, version: int) -> bytes:
    """An Olm payload (a msgpack map) with ``dlv: version`` added; anything that is not
    one msgpack map is returned unchanged."""
    try:
        m = msgpack.unpackb(plaintext, raw=False)
    except (ValueError, msgpack.UnpackException):
        return plaintext
    if not isinstance(m, dict):
        return plaintext
    m[HINT_FIELD] = version
    return msgpack.packb(m, use_bin_type=True)


def read_hint(plaintext: bytes) -> int | None:
    """The ``dlv`` of a decrypted Olm payload, or ``None``."""
    try:
        m = msgpack.unpackb(plaintext, raw=False, strict_map_key=True, ext_hook=refuse_ext,
                            max_map_len=64, max_array_len=4096)
    except (ValueError, msgpack.UnpackException):
        return None
    hint = m.get(HINT_FIELD) if isinstance(m, dict) else None
    return hint if type(hint) is int and hint > 0 else None


def note_hint(highest: dict[str, int], held: DeviceList | None, user_id: str,
              hint: int) -> bool:
    """Raise ``highest[user_id]`` to ``hint`` (bounded by the held list's version plus
    ``MAX_VERSION_STEP``); ``True`` if it grew beyond the held list's version."""
    if held is None:
        return False
    hint = min(hint, held.version + MAX_VERSION_STEP)
    if hint > highest.get(user_id, 0):
        highest[user_id] = hint
    return hint > held.version
