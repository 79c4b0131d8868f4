"""Issue 9, "One connection layer ... Every wire structure is encoded and decoded only
inside ``relay/protocol``": the modules outside it that import msgpack are exactly the
ones below, each with what it encodes, none of which a relay node and a client (or two
nodes) exchange. A new importer fails this test until it is either moved into
``relay/protocol`` or added here with its reason."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("relay", "storage", "cli", "bench", "demo", "faults")

ALLOWED = {
    # relay: not a frame; the canonical bytes whose SHA-256 is the ring version
    "relay/config/ring.py": "ring version hash input",
    # cli: end-to-end plaintexts, inside Olm/Megolm (the relay only sees ciphertext)
    "cli/features/payload.py": "E2E payload",
    "cli/features/kinds.py": "E2E payload",
    "cli/features/group_messaging.py": "E2E payload (Megolm inner, key shares)",
    "cli/features/group_receiving.py": "E2E payload",
    "cli/features/receiving.py": "E2E payload",
    "cli/features/retry.py": "E2E payload (retry/resend controls)",
    "cli/session/groups.py": "E2E Megolm plaintext",
    "cli/session/group_state.py": "E2E signed group state (account-signed body)",
    "cli/session/listfresh.py": "E2E payload (device-list version hint)",
    # cli: device to device through a linking mailbox (opaque to the relay, sealed)
    "cli/features/linkcode.py": "linking code, device_info, sealed material",
    "cli/features/wordcode.py": "word-code PAKE device_info",
    # cli: the device's own files on disk
    "cli/session/state.py": "local state",
    "cli/session/statecodec.py": "local state",
    "cli/session/statestore.py": "local state",
    "cli/session/journal.py": "local state",
    "cli/session/inbox.py": "local state",
}


def _imports_msgpack(path: Path) -> bool:
    tree = ast.parse(path.read_text(), str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import) and any(a.name.split(".")[0] == "msgpack"
                                                for a in node.names):
            return True
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "msgpack":
            return True
    return False


def test_msgpack_is_imported_outside_relay_protocol_only_where_listed() -> None:
    found = {
        str(p.relative_to(ROOT))
        for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")
        if not p.is_relative_to(ROOT / "relay" / "protocol") and _imports_msgpack(p)
    }
    assert found == set(ALLOWED), (
        f"new: {sorted(found - set(ALLOWED))}; gone (drop from ALLOWED): "
        f"{sorted(set(ALLOWED) - found)}")


def test_the_scan_sees_an_import() -> None:
    assert _imports_msgpack(ROOT / "relay" / "protocol" / "codec.py")
    assert not _imports_msgpack(ROOT / "relay" / "services" / "outbox.py")
