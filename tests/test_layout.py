"""The package layout (docs/layout.md): no import cycles, and imports point down the layers.

Module-level imports only (``if TYPE_CHECKING:`` blocks and imports inside functions
are not edges). A failure names the offending edge or cycle.
"""

from __future__ import annotations

import ast
import pathlib

import pytest

from tests.importgraph import cycles

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGES = ("relay", "storage", "cli")

#: package prefix -> the only prefixes its modules may import from our code.
LAYERS = {
    "relay.protocol": ("relay.protocol",),
    "relay.net": ("relay.protocol", "relay.net"),
    "storage": ("storage",),
    "relay.config": ("relay.config", "relay.protocol", "relay.errors", "storage"),
    "relay.services": ("relay.protocol", "relay.net", "relay.services", "relay.config",
                       "relay.errors", "storage"),
    "cli": ("cli", "relay.protocol", "relay.net"),
}
NO_TRIO = ("relay.protocol",)  # sans-I/O


def _name(path: pathlib.Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_name(p): p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")}


def _imports(name: str, path: pathlib.Path) -> set[str]:
    """Every module (ours or foreign) that ``name`` imports at module level."""
    is_pkg = path.name == "__init__.py"
    found: set[str] = set()

    def visit(body: list[ast.stmt]) -> None:
        for node in body:
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                continue
            if isinstance(node, ast.Import):
                found.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = name.split(".") if is_pkg else name.split(".")[:-1]
                    base = base[:len(base) - node.level + 1]
                    mod = ".".join(base + ([node.module] if node.module else []))
                else:
                    mod = node.module or ""
                subs = [f"{mod}.{a.name}" for a in node.names if f"{mod}.{a.name}" in MODULES]
                found.update(subs or [mod])
            elif not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                for field in ("body", "orelse", "finalbody"):
                    sub = getattr(node, field, None)
                    if isinstance(sub, list):
                        visit(sub)
                for handler in getattr(node, "handlers", []):
                    visit(handler.body)

    visit(ast.parse(path.read_text()).body)
    return found - {name}


GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}


def _ours(deps: set[str]) -> set[str]:
    return {d for d in deps if d in MODULES}


def _cycles() -> list[list[str]]:
    """Import cycles among our modules."""
    return cycles({name: _ours(deps) for name, deps in GRAPH.items()})


def _within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def test_the_module_graph_is_found() -> None:
    assert {"relay.protocol.frames", "relay.net.link", "relay.node", "storage.lmdb"} <= set(GRAPH)
    assert "relay.protocol.frames" in GRAPH["relay.protocol.codec"] | GRAPH["relay.protocol"]


def test_no_import_cycles() -> None:
    assert _cycles() == []


@pytest.mark.parametrize("prefix", sorted(LAYERS))
def test_imports_point_down(prefix: str) -> None:
    allowed = LAYERS[prefix]
    bad = sorted(f"{m} -> {d}" for m, deps in GRAPH.items() if _within(m, prefix)
                 for d in _ours(deps) if not any(_within(d, a) for a in allowed))
    assert bad == []


@pytest.mark.parametrize("prefix", NO_TRIO)
def test_sans_io_core_has_no_trio(prefix: str) -> None:
    bad = sorted(m for m, deps in GRAPH.items() if _within(m, prefix)
                 for d in deps if _within(d, "trio") or _within(d, "trio_websocket"))
    assert bad == []
