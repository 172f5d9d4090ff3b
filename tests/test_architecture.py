"""The import direction of docs/architecture.md: plugin packages import the core, never the reverse;
no import cycle in the core; no project import hidden inside a function except the documented ones."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PLUGINS = ("strategies", "scenarios", "metrics", "experiments")
PROJECT = ("clframe", *PLUGINS)
# (file, imported module): function-level project imports that stay, and why
DEFERRED = {
    ("clframe/__init__.py", "clframe.runner"): "`import clframe` stays light (runner imports torch)",
    ("clframe/__init__.py", "clframe.config"): "same",
    ("clframe/cli.py", "clframe.config"): "--help / list / plot answer without importing torch",
    ("clframe/cli.py", "clframe.registry"): "same",
    ("clframe/cli.py", "clframe.plots"): "same",
    ("clframe/cli.py", "clframe.report"): "same",
    ("clframe/cli.py", "clframe.runner"): "same",
}
# core -> plugin imports still to remove (the redesign issue); the test fails when one is added or removed
CORE_TO_PLUGIN = {
    ("clframe/config.py", "experiments"): "locates the packaged config folder",
    ("clframe/runner.py", "metrics.cl"): "the accuracy-matrix summary; to become a registered summary",
}


def _imports(path: Path):
    tree = ast.parse(path.read_text())
    top = {id(n) for n in tree.body}
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)) and not (isinstance(node, ast.ImportFrom) and node.level):
            names = [node.module] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names]
            for mod in names:
                if mod and mod.split(".")[0] in PROJECT:
                    yield mod, id(node) in top


def _files():
    for pkg in PROJECT:
        yield from sorted((ROOT / pkg).rglob("*.py"))


def test_the_core_imports_no_plugin_package_beyond_the_listed_ones():
    found = set()
    for path in (ROOT / "clframe").rglob("*.py"):
        rel = str(path.relative_to(ROOT))
        found |= {(rel, mod) for mod, _ in _imports(path) if mod.split(".")[0] in PLUGINS}
    assert found == set(CORE_TO_PLUGIN), found ^ set(CORE_TO_PLUGIN)


def test_no_project_import_is_hidden_inside_a_function():
    hidden = set()
    for path in _files():
        rel = str(path.relative_to(ROOT))
        hidden |= {(rel, mod) for mod, top in _imports(path) if not top}
    assert hidden <= set(DEFERRED) | set(CORE_TO_PLUGIN), hidden - set(DEFERRED) - set(CORE_TO_PLUGIN)


def test_the_core_has_no_import_cycle():
    graph: dict[str, set[str]] = {}
    for path in (ROOT / "clframe").rglob("*.py"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        graph[name] = {m for m, top in _imports(path) if top and m.startswith("clframe")}
    graph = {k: {m for m in v if m in graph and m != k} for k, v in graph.items()}

    def visit(node, stack):
        assert node not in stack, " -> ".join([*stack, node])
        for nxt in graph[node]:
            if nxt not in done:
                visit(nxt, [*stack, node])
        done.add(node)

    done: set[str] = set()
    for node in graph:
        if node not in done:
            visit(node, [])
