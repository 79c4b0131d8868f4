"""The node's accept side runs on the one connection layer (issue 9): the connection
mechanics are in ``relay.net`` (``relay/net/accepted.py`` over the sans-I/O
``relay.protocol.connection``), and ``relay.serving`` only dispatches: it touches no
WebSocket, no socket and decodes no frame itself."""

from __future__ import annotations

import ast
import pathlib

SERVING = pathlib.Path(__file__).resolve().parents[2] / "relay" / "serving"
SOCKET_LEVEL = ("trio_websocket", "wsproto", "socket", "msgpack")


def _imported(path: pathlib.Path) -> set[str]:
    """Modules imported anywhere but in ``if TYPE_CHECKING:`` blocks (annotations only)."""
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            node.body = []
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
    return names


def test_serving_dispatches_only():
    modules = sorted(SERVING.glob("*.py"))
    assert modules
    for path in modules:
        bad = {n for n in _imported(path) if n.split(".")[0] in SOCKET_LEVEL}
        assert not bad, f"{path.name} imports {sorted(bad)}: connection mechanics belong in relay.net"
        text = path.read_text()
        for call in ("get_message(", "send_message(", "receive_data(", "read_frame("):
            assert call not in text, f"{path.name} calls {call} (relay.net's job)"
