"""How ``wa-cli history`` shows the effects of later messages on a stored message, and
``history --export``.

A history row (``--json``) keeps the shape of a ``recv --json`` line and gains, where
they apply (docs/cli.md):

* ``reply_to``: the quoted message's id (hex); ``expires_at``: when it disappears (ms);
* ``reactions``: ``{user_id: emoji}``;
* ``edited``: when it was last edited (the sender's ms; ``text`` is the new text);
* ``deleted``: ``true`` (deleted for everyone: ``text`` is ``""``, no ``file``);
* ``receipt``: for a message this account sent, ``{"delivered": [user_id],
  "read": [user_id]}``; for a received one, ``read``: ``true`` once this account read it.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING

from cli.output import escape, escape_lines

if TYPE_CHECKING:
    from cli.session.state import State

__all__ = ["EXPORT_FORMAT", "decorate", "export"]

EXPORT_FORMAT = 1


def _label(state: State, user_id: str) -> str:
    if user_id == state.user_id:
        return "you"
    return escape(state.alias_of(user_id) or f"{user_id[:12]}\u2026")


def decorate(state: State, entry: dict, obj: dict, human: str) -> tuple[dict, str]:
    """Add the fields above to a row's JSON object and lines to its human text."""
    lines = [human]
    if entry.get("reply_to"):
        obj["reply_to"] = entry["reply_to"]
        quoted = state.find_history(entry["reply_to"])
        what = escape_lines(quoted.get("text", "")[:60]) if quoted else "a message not stored here"
        lines.append(f"  in reply to {entry['reply_to'][:8]}: {what}")
    if entry.get("expires_at"):
        obj["expires_at"] = entry["expires_at"]
    if entry.get("edited"):
        obj["edited"] = entry["edited"]
        lines[0] += "  (edited)"
    if entry.get("deleted"):
        obj["deleted"] = True
    reactions = entry.get("reactions") or {}
    if reactions:
        obj["reactions"] = dict(reactions)
        lines.append("  reactions: " + ", ".join(f"{escape(e)} {_label(state, u)}"
                                                 for u, e in sorted(reactions.items())))
    if entry.get("direction") == "out" and entry.get("from") == state.user_id:
        got = entry.get("receipts") or {}
        obj["receipt"] = {"delivered": list(got.get("delivered", [])),
                          "read": list(got.get("read", []))}
        if got:
            lines.append("  " + "; ".join(
                f"{status} by {', '.join(_label(state, u) for u in got[status])}"
                for status in ("delivered", "read") if got.get(status)))
    elif entry.get("read"):
        obj["read"] = True
    return obj, "\n".join(lines)


def export(path: Path, state: State, rows: list[dict]) -> int:
    """Write ``rows`` (history ``--json`` rows) to ``path`` as one JSON document
    ``{"format": 1, "user_id", "device_id", "exported_at" (ms), "messages": rows}``,
    atomically (a temporary file renamed over it) and mode 0600 (it is plaintext);
    returns the number of rows.

    Raises:
        OSError: the file could not be written.
    """
    doc = {"format": EXPORT_FORMAT, "user_id": state.user_id, "device_id": state.device_id,
           "exported_at": int(time.time() * 1000), "messages": rows}
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(doc, f, ensure_ascii=False, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return len(rows)
