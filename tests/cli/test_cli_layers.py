"""The layering of ``cli/`` (docs: ../shared/STYLE.md, "Layout we aim for"), read from the
source with :mod:`ast`: every import counts, also under ``TYPE_CHECKING`` and inside
functions, so that a cycle cannot hide behind a late import."""

from __future__ import annotations

import ast
from pathlib import Path

import cli
from tests.importgraph import cycles

ROOT = Path(cli.__file__).parent


def _modules() -> dict[str, Path]:
    mods = {}
    for path in ROOT.rglob("*.py"):
        parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        mods[".".join(parts)] = path
    return mods


def _imports(name: str, path: Path, mods: dict[str, Path]) -> set[str]:
    """The ``cli`` modules that module ``name`` imports (a name imported from a package
    that is itself a module counts as that module)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            subs = [f"{target}.{a.name}" for a in node.names if f"{target}.{a.name}" in mods]
            found.update(subs or [target])
    # importing a.b.c runs the package a.b's __init__ first: an edge too (except to the
    # importer's own packages, which are being initialised already)
    own = {name.rsplit(".", i)[0] for i in range(1, name.count(".") + 1)}
    for m in list(found):
        parts = m.split(".")
        found.update(".".join(parts[:i]) for i in range(1, len(parts)))
    return {m for m in found if m in mods and m != name and m not in own}


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    return {name: _imports(name, path, mods) for name, path in mods.items()}


_cycles = cycles


def test_the_graph_sees_the_layers():
    graph = _graph()
    assert "cli.session.state" in graph["cli.session.statestore"] or \
        "cli.session.statecodec" in graph["cli.session.statestore"]
    assert "cli.features.sending" in graph["cli.client"]
    assert "cli.session.session" in graph["cli.features.sending"]


def test_no_import_cycles_in_cli():
    assert _cycles(_graph()) == []


def test_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_features_and_session_never_import_the_front_ends():
    front = ("cli.client", "cli.commands", "cli.daemon", "cli.output")
    bad = {name: sorted(m for m in deps if m.startswith(front))
           for name, deps in _graph().items()
           if name.startswith(("cli.features", "cli.session"))}
    assert {k: v for k, v in bad.items() if v} == {}


def test_session_never_imports_features():
    bad = {name: sorted(m for m in deps if m.startswith("cli.features"))
           for name, deps in _graph().items() if name.startswith("cli.session")}
    assert {k: v for k, v in bad.items() if v} == {}
