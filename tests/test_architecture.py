"""The import direction of docs/architecture.md: plugin packages import the core, never the reverse;
no import cycle in the core; no project import hidden inside a function except the documented ones."""

from __future__ import annotations

import ast
import functools
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FOLDERS = (
    "clframe",
    "strategies",
    "scenarios",
    "metrics",
    "unlearning",
    "experiments",
)  # installed as clframe.<folder>
PLUGINS = tuple(f"clframe.{name}" for name in FOLDERS[1:])
# (file, imported module): function-level project imports that stay, and why
DEFERRED = {
    ("clframe/__init__.py", "clframe.runner"): "`import clframe` stays light (runner imports torch)",
    ("clframe/__init__.py", "clframe.config"): "same",
    ("clframe/cli.py", "clframe.config"): "--help / list / plot answer without importing torch",
    ("clframe/cli.py", "clframe.registry"): "same",
    ("clframe/cli.py", "clframe.plots"): "same",
    ("clframe/cli.py", "clframe.report"): "same",
    ("clframe/cli.py", "clframe.document"): "same",
    ("clframe/cli.py", "clframe.runner"): "same",
    ("clframe/cli.py", "clframe.sweeps"): "same (it imports Hydra's callback base class)",
}
# core -> plugin imports (none: the core reaches plugins through the registry only)
CORE_TO_PLUGIN: dict[tuple[str, str], str] = {}


def _imports(path: Path):
    tree = ast.parse(path.read_text())
    top = {id(n) for n in tree.body}
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)) and not (isinstance(node, ast.ImportFrom) and node.level):
            if isinstance(node, ast.ImportFrom):  # `from clframe import experiments` imports clframe.experiments
                subs = [f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in _modules()]
                names = subs or [node.module]
            else:
                names = [a.name for a in node.names]
            for mod in dict.fromkeys(names):
                if mod and mod.split(".")[0] in FOLDERS:
                    yield mod, id(node) in top


def _is_plugin(mod: str) -> bool:
    return any(mod == p or mod.startswith(f"{p}.") for p in PLUGINS) or mod.split(".")[0] in FOLDERS[1:]


def _files():
    for pkg in FOLDERS:
        yield from sorted((ROOT / pkg).rglob("*.py"))


def test_the_core_imports_no_plugin_package_beyond_the_listed_ones():
    found = set()
    for path in (ROOT / "clframe").rglob("*.py"):
        rel = str(path.relative_to(ROOT))
        found |= {(rel, mod) for mod, _ in _imports(path) if _is_plugin(mod)}
    assert found == set(CORE_TO_PLUGIN), found ^ set(CORE_TO_PLUGIN)


def test_no_project_import_is_hidden_inside_a_function():
    hidden = set()
    for path in _files():
        rel = str(path.relative_to(ROOT))
        hidden |= {(rel, mod) for mod, top in _imports(path) if not top and mod in _modules()}
    assert hidden <= set(DEFERRED) | set(CORE_TO_PLUGIN), hidden - set(DEFERRED) - set(CORE_TO_PLUGIN)


@functools.cache
def _modules() -> set[str]:
    """Every importable project module name (``clframe.strategies.naive``, ...), to tell modules from names."""
    out = set()
    for folder in FOLDERS:
        for path in (ROOT / folder).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            parts = parts[:-1] if parts[-1] == "__init__" else parts
            out.add(".".join(parts if folder == "clframe" else ("clframe", *parts)))
    return out


def test_plugin_folders_are_only_imported_as_clframe_subpackages():
    """``import strategies`` would pick up a user's own ``strategies`` folder in the working directory."""
    bare = set()
    for path in _files():
        bare |= {(str(path.relative_to(ROOT)), m) for m, _ in _imports(path) if m.split(".")[0] in FOLDERS[1:]}
    for path in sorted((ROOT / "tests").glob("*.py")) + sorted((ROOT / "benchmarks").glob("*.py")):
        bare |= {(str(path.relative_to(ROOT)), m) for m, _ in _imports(path) if m.split(".")[0] in FOLDERS[1:]}
    assert not bare, bare


def test_plugin_packages_do_not_import_each_other():
    """A metric never needs a method's module (shared pieces live in the core: clframe.introspect, ...);
    scenarios and strategies are independent too."""
    crossing = set()
    for folder in FOLDERS[1:]:
        for path in sorted((ROOT / folder).rglob("*.py")):
            own = f"clframe.{folder}"
            for mod, _ in _imports(path):
                if _is_plugin(mod) and not (mod == own or mod.startswith(f"{own}.")):
                    crossing.add((str(path.relative_to(ROOT)), mod))
    assert not crossing, crossing


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
