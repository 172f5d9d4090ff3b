"""Lines of method logic per registered strategy class: the class body without its docstrings, comments and
blank lines (the measure behind "a new strategy takes ~20-40 lines").

    python benchmarks/strategy_sizes.py
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _docstring_lines(tree: ast.AST) -> set[int]:
    lines: set[int] = set()
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr):
            value = body[0].value
            if isinstance(value, ast.Constant) and isinstance(value.value, str):
                lines |= set(range(body[0].lineno, body[0].end_lineno + 1))
    return lines


def strategy_sizes(folder: Path = ROOT / "strategies") -> dict[str, int]:
    """``{file:Class: lines}`` for every class decorated with ``@register_strategy``."""
    sizes = {}
    for path in sorted(folder.glob("*.py")):
        source = path.read_text()
        tree, lines = ast.parse(source), source.splitlines()
        docs = _docstring_lines(tree)
        for node in tree.body:
            if not isinstance(node, ast.ClassDef):
                continue
            names = [getattr(d.func, "id", "") for d in node.decorator_list if isinstance(d, ast.Call)]
            if "register_strategy" in names:
                body = range(node.lineno, node.end_lineno + 1)
                code = [i for i in body if lines[i - 1].strip() and not lines[i - 1].strip().startswith("#")]
                sizes[f"{path.name}:{node.name}"] = len([i for i in code if i not in docs])
    return sizes


if __name__ == "__main__":
    print("| strategy | lines of method logic |\n|---|---|")
    for name, n in sorted(strategy_sizes().items(), key=lambda kv: -kv[1]):
        print(f"| {name} | {n} |")
