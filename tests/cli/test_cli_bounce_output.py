"""A bounce (a message acknowledged, then refused by the recipient's home) is a JSON line
on stdout with ``--json`` (docs/cli.md), a note on stderr without."""

from __future__ import annotations

import json
from pathlib import Path

from cli.commands._common import AppContext
from cli.commands._events import show
from cli.events import Bounce
from cli.output import Output

BOUNCE = Bounce(b"\xab" * 16, "6uro26ci5gmk" * 4 + "abcd", "stale_devices", "gone",
                error="device 1 has no keys")


def test_bounce_is_a_json_line_on_stdout(capsys) -> None:
    show(AppContext(home=Path("."), out=Output(json_mode=True)), None, BOUNCE)  # type: ignore[arg-type]
    out, err = capsys.readouterr()
    assert err == ""
    assert json.loads(out) == {"type": "bounce", "id": "ab" * 16, "to": BOUNCE.user_id,
                               "code": "stale_devices", "message": "gone", "resent": None,
                               "error": "device 1 has no keys"}


def test_bounce_is_a_note_without_json(capsys) -> None:
    show(AppContext(home=Path("."), out=Output(json_mode=False)), None, BOUNCE)  # type: ignore[arg-type]
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith(f"message {'ab' * 16} to ") and "resend failed" in err
