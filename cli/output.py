"""Rendering for ``wa-cli``: human text, or ``--json`` (one JSON object per line on stdout).

In ``--json`` mode stdout carries only JSON lines; notes and warnings always go
to stderr.

Human output never passes a peer's control characters to the terminal: names,
texts, file names and group names come from other people, so every C0/C1
control character, DEL, the Unicode line and paragraph separators and the bidi
controls (U+061C, U+200E/F, U+202A-U+202E, U+2066-U+2069) are shown as
backslash escapes (:func:`escape`). A multi-line message text keeps its line
breaks, but every continuation line starts with ``"  | "`` (:func:`escape_lines`),
so a text cannot pass for another row. As a last line of defence :class:`Output`
escapes these characters (except newline and tab) in everything it prints.
JSON lines keep every string exact; the characters above are written as
``\\uXXXX`` escapes, so a line never contains a raw line separator.
"""

from __future__ import annotations

import contextlib
import json
import re
import sys
from collections.abc import Callable
from datetime import datetime

import click
import tqdm

from cli.events import Bounce, DevicesChanged, Message, Requested

UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029"
                    "\u202a-\u202e\u2066-\u2069]")
"""Characters never written raw to a terminal (see the module docstring)."""

_SINK_UNSAFE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029"
                          "\u202a-\u202e\u2066-\u2069]")  # UNSAFE minus newline and tab
_JSON_UNSAFE = re.compile("[\x7f-\x9f\u061c\u200e\u200f\u2028\u2029"
                          "\u202a-\u202e\u2066-\u2069]")  # what json.dumps leaves raw
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
CONTINUATION = "  | "
"""Prefix of the continuation lines of a multi-line message text."""


def _escape_char(match: re.Match) -> str:
    c = match.group()
    if c in _NAMED:
        return _NAMED[c]
    return f"\\x{ord(c):02x}" if ord(c) < 0x100 else f"\\u{ord(c):04x}"


def escape(text: str) -> str:
    """``text`` made safe for one line of terminal output: each :data:`UNSAFE` character
    becomes ``\\n``, ``\\r``, ``\\t``, ``\\xNN`` or ``\\uNNNN``; other text is unchanged."""
    return UNSAFE.sub(_escape_char, text)


def escape_lines(text: str, prefix: str = CONTINUATION) -> str:
    """A multi-line text for terminal output: lines split at ``\\n`` (or ``\\r\\n``),
    each :func:`escape` d, every line after the first starting with ``prefix``."""
    return ("\n" + prefix).join(escape(line) for line in text.replace("\r\n", "\n").split("\n"))


def has_unsafe(text: str) -> bool:
    """``True`` if ``text`` holds a character of :data:`UNSAFE` (names must not)."""
    return UNSAFE.search(text) is not None


def sender_label(known: str | None, declared: str, user_id: str) -> str:
    """How a sender is shown: ``known`` (the local contact alias, or this account's own
    name) if there is one, else ``~declared (unknown abcdefghijkl…)``: the name the
    sender chose, marked as unverified, and the start of its user id. Escaped."""
    if known is not None:
        return escape(known)
    unknown = f"unknown {user_id[:12]}\u2026"
    return f"~{escape(declared)} ({unknown})" if declared else unknown


class Output:
    """Writes results for one command invocation.

    Args:
        json_mode: ``True`` for ``--json``.
    """

    def __init__(self, json_mode: bool) -> None:
        self.json_mode = json_mode

    def emit(self, obj: dict, human: str) -> None:
        """One result: ``obj`` as a JSON line in ``--json`` mode, else ``human`` on stdout
        (control characters other than newline and tab escaped)."""
        if self.json_mode:
            click.echo(json_line(obj))
        else:
            click.echo(scrub(human))

    def heading(self, text: str) -> None:
        """A header row on stdout in human mode only (nothing with ``--json``)."""
        if not self.json_mode:
            click.echo(scrub(text))

    def note(self, text: str) -> None:
        """A human note or warning on stderr (both modes; escaped like :meth:`emit`)."""
        click.echo(scrub(text), err=True)


def json_line(obj: dict) -> str:
    """``obj`` as one line of JSON (UTF-8 kept; the characters of :data:`UNSAFE` that
    ``json.dumps`` would leave raw are written as ``\\uXXXX``)."""
    text = json.dumps(obj, ensure_ascii=False, separators=(",", ":"))
    return _JSON_UNSAFE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


def scrub(text: str) -> str:
    """:func:`escape` every :data:`UNSAFE` character except newline and tab (for text
    whose line breaks are ours)."""
    return _SINK_UNSAFE.sub(_escape_char, text)


def message_json(msg: Message, known: str | None) -> dict:
    """The ``recv --json`` object of a message (DESIGN.md, CLI contract).

    Keys: ``id`` (hex msg_id), ``from`` (sender user_id), ``from_name``,
    ``from_device``, ``direction`` (``in``/``out``), ``ts`` (ms), ``type``,
    ``text``; plus ``to`` for ``out``; plus ``group`` (name) and ``group_id`` (hex)
    for a group message.

    ``from_name`` is ``known``: the local contact alias of the sender (or this
    account's own name for its own messages). For any other sender it is ``null``
    and ``declared_name`` holds the name the sender declared (unverified: anyone can
    claim any name).
    """
    obj = {
        "id": msg.msg_id.hex(),
        "from": msg.sender_user,
        "from_name": known,
        "from_device": msg.sender_device,
        "direction": msg.direction,
        "ts": msg.ts,
        "type": msg.type,
        "text": msg.text,
    }
    if known is None:
        obj["declared_name"] = msg.declared_name
    if msg.direction == "out":
        obj["to"] = msg.peer
    if msg.group_id is not None:
        obj["group"], obj["group_id"] = msg.group, msg.group_id
    if msg.extra:
        obj.update(msg.extra)
    return obj


def clock(ts_ms: int) -> str:
    """``ts_ms`` (milliseconds since the Unix epoch) as local ``YYYY-MM-DD HH:MM:SS``; a
    time no calendar shows (a sender's or relay's ``ts`` is their word: year 3 million,
    or before year 1) as ``?ts=N``, never an error (it broke ``recv`` and ``history``
    for good: the message stayed in the inbox, failing every next run)."""
    try:
        return datetime.fromtimestamp(ts_ms / 1000).strftime("%Y-%m-%d %H:%M:%S")
    except (OverflowError, ValueError, OSError):
        return f"?ts={ts_ms}"


def message_human(msg: Message, sender: str, peer: str) -> str:
    """``[time] SENDER: text`` (incoming) or ``[time] you (device N) -> PEER: text``; a
    group message shows ``SENDER @ group`` (``peer`` is then ignored).

    ``sender`` and ``peer`` are display labels, already escaped (:func:`sender_label`);
    the text keeps its line breaks with :data:`CONTINUATION` lines (:func:`escape_lines`).
    """
    text = escape_lines(msg.text)
    if msg.extra:
        text = kind_human(msg.type, msg.extra, text)
    me = f"you (device {msg.sender_device})"
    if msg.group_id is not None:
        who = me if msg.direction == "out" else sender
        return f"[{clock(msg.ts)}] {who} @ {escape(msg.group or '')}: {text}"
    if msg.direction == "out":
        return f"[{clock(msg.ts)}] {me} -> {peer}: {text}"
    return f"[{clock(msg.ts)}] {sender}: {text}"


def kind_human(kind: str, extra: dict, text: str) -> str:
    """The text part of a row for a message with kind fields (:attr:`cli.events.Message.extra`):
    ``(reply to 1a2b3c4d) text``, ``reacted 👍 to 1a2b3c4d``, ``edited 1a2b3c4d: text``,
    ``deleted 1a2b3c4d``, ``read 1a2b3c4d, ...``, ``is typing``, ``set disappearing
    messages to 60 s``; ids shortened to 8 hex digits, everything escaped."""
    def short(msg_id: str) -> str:
        return escape(msg_id[:8])

    if "reaction" in extra:
        r = extra["reaction"]
        if not r["emoji"]:
            return f"removed the reaction to {short(r['target'])}"
        return f"reacted {escape(r['emoji'])} to {short(r['target'])}"
    if "edit_of" in extra:
        return f"edited {short(extra['edit_of'])}: {text}"
    if "deleted" in extra:
        return f"deleted {short(extra['deleted'])}"
    if "receipt" in extra:
        r = extra["receipt"]
        return f"{escape(r['status'])} {', '.join(short(i) for i in r['ids'])}"
    if "typing" in extra:
        return "is typing" if extra["typing"] else "stopped typing"
    if kind == "timer":
        n = extra["expires_in"]
        return f"set disappearing messages to {n} s" if n else "turned disappearing messages off"
    if "reply_to" in extra:
        text = f"(reply to {short(extra['reply_to'])}) {text}"
    if extra.get("expires_in"):
        text += f"  (disappears after {extra['expires_in']} s)"
    return text


def request_json(req: Requested) -> dict:
    """The ``recv --json`` line of a held message request::

        {"type": "request", "kind": "user"|"group", "key", "from", "declared_name",
         "group", "id"}
    """
    return {"type": "request", "kind": req.kind, "key": req.key, "from": req.sender_user,
            "declared_name": req.declared_name, "group": req.group, "id": req.msg_id}


def request_human(req: Requested) -> str:
    """One line announcing a held message or invitation, and how to accept it."""
    who = sender_label(None, req.declared_name, req.sender_user)
    if req.kind == "group":
        what = (f"invitation to group {escape(req.group or '?')!r} from {who}"
                if req.msg_id is None else f"message in group {escape(req.group or '?')!r}")
    else:
        what = f"message request from {who}"
    return f"{what}: held; 'wa-cli requests accept {req.key}' shows it"


def bounce_json(bounce: Bounce) -> dict:
    """The ``recv --json`` line of a bounce (a message the recipient's home could not
    deliver; ``resent`` is the status of the automatic resend under the same id, or
    ``null``; ``error`` why that resend failed, or ``null``)::

        {"type": "bounce", "id", "to", "code", "message", "resent", "error"}
    """
    return {"type": "bounce", "id": bounce.msg_id.hex(), "to": bounce.user_id,
            "code": bounce.code, "message": bounce.message, "resent": bounce.resent_status,
            "error": bounce.error}


def bounce_human(bounce: Bounce) -> str:
    """A one-line description of a bounce and what was done about it."""
    what = (f"message {bounce.msg_id.hex()} to {escape(bounce.user_id[:12]) or '?'} bounced "
            f"({escape(bounce.code)}")
    what += f": {escape(bounce.message)})" if bounce.message else ")"
    if bounce.resent_status:
        return f"{what}; re-encrypted and resent: {escape(bounce.resent_status)}"
    if bounce.error:
        return f"{what}; resend failed: {escape(bounce.error)}"
    return what


def devices_changed_json(change: DevicesChanged) -> dict:
    """The ``recv --json`` line of a device-list change::

        {"type": "devices_changed", "user_id", "name", "version",
         "added": [{"device_id", "name"}], "removed": [{"device_id", "name"}]}
    """
    return {
        "type": "devices_changed", "user_id": change.user_id, "name": change.name,
        "version": change.version,
        "added": [{"device_id": i, "name": n} for i, n in change.added],
        "removed": [{"device_id": i, "name": n} for i, n in change.removed],
    }


def devices_changed_human(change: DevicesChanged, own: bool) -> str:
    """``bob linked a new device (tablet)`` / ``bob removed device 2``, one line per change
    (``you ...`` for this account's own list; ``unknown abcdefghijkl…`` for a user who
    is not a contact). Device names are escaped."""
    who = "you" if own else sender_label(change.name or None, "", change.user_id)
    lines = [f"{who} linked a new device ({escape(n)})" for _, n in change.added]
    lines += [f"{who} removed device {i}" for i, _ in change.removed]
    return "\n".join(lines) or f"{who} published device list version {change.version}"


def progress_bar(out: Output, label: str) -> contextlib.AbstractContextManager[Callable[[int, int], None]]:
    """A ``progress(done, total)`` callback (bytes) that draws a bar on stderr: bytes
    done and total, percent, rate (bytes/s) and time left (a ``tqdm`` bar). Drawn only
    in human mode when stderr is a terminal; with ``--json``, or stderr redirected to a
    file or pipe, it does nothing. Use as a context manager; the bar is created on the
    first call (when the total is known) and finished on exit."""
    return _ProgressBar(label if not out.json_mode and _is_terminal(sys.stderr) else None)


def _is_terminal(stream: object) -> bool:
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty()) if isatty is not None else False
    except ValueError:  # closed
        return False


class _ProgressBar(contextlib.AbstractContextManager):
    def __init__(self, label: str | None) -> None:
        self._label = None if label is None else escape(label)
        self._bar: tqdm.tqdm | None = None

    def __call__(self, done: int, total: int) -> None:
        if self._label is None:
            return
        if self._bar is None:
            self._bar = tqdm.tqdm(total=max(total, 1), desc=self._label, file=sys.stderr,
                                  unit="B", unit_scale=True, unit_divisor=1024,
                                  dynamic_ncols=True, mininterval=0.2, leave=True)
        if done < self._bar.n:  # a transfer that had to start over
            self._bar.reset(total=max(total, 1))
        self._bar.update(done - self._bar.n)

    def __enter__(self) -> Callable[[int, int], None]:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.close()


def file_human(file: dict) -> str:
    """One line describing a received file: where it was saved, or why not (escaped)."""
    what = f"file {escape(str(file.get('name') or '?'))} ({file.get('size', 0)} bytes)"
    if file.get("path"):
        return f"{what} saved to {escape(str(file['path']))}"
    if file.get("error"):
        return f"{what} NOT saved: {escape(str(file['error']))}"
    if file.get("held"):
        return (f"{what} not downloaded ({escape(str(file['held']))}); to fetch it: "
                f"{escape(str(file.get('fetch') or 'wa-cli history --download'))}")
    return f"{what} not downloaded yet (will retry on the next recv)"
