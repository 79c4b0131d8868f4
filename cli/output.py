"""Rendering for ``wa-cli``: human text, or ``--json`` (one JSON object per line on stdout).

In ``--json`` mode stdout carries only JSON lines; notes and warnings always go
to stderr.
"""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Callable
from datetime import datetime

import click

from .events import Bounce, DevicesChanged, Message


class Output:
    """Writes results for one command invocation.

    Args:
        json_mode: ``True`` for ``--json``.
    """

    def __init__(self, json_mode: bool) -> None:
        self.json_mode = json_mode

    def emit(self, obj: dict, human: str) -> None:
        """One result: ``obj`` as a JSON line in ``--json`` mode, else ``human`` on stdout."""
        if self.json_mode:
            click.echo(json.dumps(obj, ensure_ascii=False, separators=(",", ":")))
        else:
            click.echo(human)

    def note(self, text: str) -> None:
        """A human note or warning on stderr (both modes)."""
        click.echo(text, err=True)


def message_json(msg: Message) -> dict:
    """The ``recv --json`` object of a message (DESIGN.md, CLI contract).

    Keys: ``id`` (hex msg_id), ``from`` (sender user_id), ``from_name``,
    ``from_device``, ``direction`` (``in``/``out``), ``ts`` (ms), ``type``,
    ``text``; plus ``to`` for ``out``; plus ``group`` (name) and ``group_id`` (hex)
    for a group message.
    """
    obj = {
        "id": msg.msg_id.hex(),
        "from": msg.sender_user,
        "from_name": msg.from_name,
        "from_device": msg.sender_device,
        "direction": msg.direction,
        "ts": msg.ts,
        "type": msg.type,
        "text": msg.text,
    }
    if msg.direction == "out":
        obj["to"] = msg.peer
    if msg.group_id is not None:
        obj["group"], obj["group_id"] = msg.group, msg.group_id
    return obj


def _clock(ts_ms: int) -> str:
    return datetime.fromtimestamp(ts_ms / 1000).strftime("%Y-%m-%d %H:%M:%S")


def message_human(msg: Message, peer_name: str) -> str:
    """``[time] name: text`` (incoming) or ``[time] you (device N) -> name: text``;
    a group message shows ``name @ group`` (``peer_name`` is then ignored)."""
    if msg.group_id is not None:
        who = (f"you (device {msg.sender_device})" if msg.direction == "out"
               else msg.from_name or msg.sender_user[:12])
        return f"[{_clock(msg.ts)}] {who} @ {msg.group}: {msg.text}"
    if msg.direction == "out":
        return f"[{_clock(msg.ts)}] you (device {msg.sender_device}) -> {peer_name}: {msg.text}"
    return f"[{_clock(msg.ts)}] {msg.from_name or msg.sender_user[:12]}: {msg.text}"


def bounce_human(bounce: Bounce) -> str:
    """A one-line description of a bounce and what was done about it."""
    what = f"message {bounce.msg_id.hex()} to {bounce.user_id[:12] or '?'} bounced ({bounce.code}"
    what += f": {bounce.message})" if bounce.message else ")"
    if bounce.resent_status:
        return f"{what}; re-encrypted and resent: {bounce.resent_status}"
    if bounce.error:
        return f"{what}; resend failed: {bounce.error}"
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
    (``you ...`` for this account's own list)."""
    who = "you" if own else (change.name or change.user_id[:12])
    lines = [f"{who} linked a new device ({n})" for _, n in change.added]
    lines += [f"{who} removed device {i}" for i, _ in change.removed]
    return "\n".join(lines) or f"{who} published device list version {change.version}"


def progress_bar(out: Output, label: str) -> contextlib.AbstractContextManager[Callable[[int, int], None]]:
    """A ``progress(done, total)`` callback (bytes) that draws a bar on stderr in human
    mode and does nothing with ``--json``. Use as a context manager; the bar is
    created on the first call (when the total is known) and finished on exit."""
    return _ProgressBar(None if out.json_mode else label)


class _ProgressBar(contextlib.AbstractContextManager):
    def __init__(self, label: str | None) -> None:
        self._label = label
        self._stack = contextlib.ExitStack()
        self._bar = None

    def __call__(self, done: int, total: int) -> None:
        if self._label is None:
            return
        if self._bar is None:
            self._bar = self._stack.enter_context(click.progressbar(
                length=max(total, 1), label=self._label, file=sys.stderr, show_pos=False,
                show_percent=True, show_eta=True))
        if done < self._bar.pos:  # a transfer that had to start over
            self._bar.pos = 0
        self._bar.update(done - self._bar.pos)

    def __enter__(self) -> Callable[[int, int], None]:
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()


def file_human(file: dict) -> str:
    """One line describing a received file: where it was saved, or why not."""
    what = f"file {file.get('name') or '?'} ({file.get('size', 0)} bytes)"
    if file.get("path"):
        return f"{what} saved to {file['path']}"
    if file.get("error"):
        return f"{what} NOT saved: {file['error']}"
    return f"{what} not downloaded yet (will retry on the next recv)"
