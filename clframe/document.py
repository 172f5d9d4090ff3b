"""``clframe report``: one self-contained Markdown or HTML file (figures embedded) for one run or a set of
runs — headline table, and per run its status, accuracy matrix (future cells greyed), plots, config and
environment. A run directory is read as data: its config is parsed with ``yaml.safe_load``, never instantiated."""

from __future__ import annotations

import base64
import tempfile
from html import escape
from pathlib import Path
from typing import Any

import yaml

from clframe.io import atomic_write_text
from clframe.plots import plot_comparison, plot_run
from clframe.report import compare_rows, find_runs, load_metrics, markdown_table, matrix_cell


def _matrix_rows(R: list[list[float | None]], setting: str = "class") -> tuple[list[str], list[list[str]]]:
    """The accuracy matrix as a table (cells as :func:`clframe.report.matrix_cell`)."""
    header = ["after \\ on", *(f"exp {j}" for j in range(len(R[0]) if R else 0))]
    rows = [[f"exp {i}", *(matrix_cell(v, j > i, setting) for j, v in enumerate(row))] for i, row in enumerate(R)]
    return header, rows


def _report_blocks(run_dirs: list[str], figures: Path) -> list[tuple[str, Any]]:
    """The report as blocks ``(kind, content)``: heading, text, table, code, image."""
    runs = find_runs(run_dirs)
    blocks: list[tuple[str, Any]] = [("heading1", "clframe report")]
    header, rows = compare_rows([str(r) for r in runs])
    blocks += [("text", "Headline metrics (percent; `–`: not reported by that run)."), ("table", (header, rows))]
    if len(runs) > 1:
        blocks += [("heading2", "All runs"), ("image", plot_comparison(runs, figures / "comparison")[0])]
    for k, run_dir in enumerate(runs):
        m = load_metrics(run_dir)
        blocks.append(("heading2", f"{run_dir.name}: {m['scenario']} / {m['strategy']} / seed {m['seed']}"))
        blocks.append(("text", f"Status `{m['status']}`" + (f" ({m['error']})" if m.get("error") else "") + "."))
        if m["accuracy_matrix"]:
            blocks.append(("text", "Accuracy matrix R[i, j] in percent: after training on experience i (rows), "
                           "on the test split of experience j (columns); `·` not learned yet."))  # fmt: skip
            blocks.append(("table", _matrix_rows(m["accuracy_matrix"], m.get("setting", "class"))))
        for key, reason in (m.get("undefined_metrics") or {}).items():
            blocks.append(("text", f"`{key}` is not reported: {reason}."))
        pngs = sorted((run_dir / "plots").glob("*.png")) if (run_dir / "plots").is_dir() else []
        if not pngs:  # plots=false: draw them here, not into someone's run directory
            pngs = plot_run(run_dir, figures / f"run{k}")
        blocks += [("image", p) for p in pngs]
        config = run_dir / "config.yaml"
        if config.is_file():
            text = yaml.safe_dump(yaml.safe_load(config.read_text()), sort_keys=False)  # data, never instantiated
            blocks += [("heading3", "Config"), ("code", text)]
        if m.get("environment"):
            env = m["environment"]
            blocks += [("heading3", "Environment"), ("table", (list(env), [list(map(str, env.values()))]))]
    return blocks


def _data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode()


def _markdown(blocks: list[tuple[str, Any]]) -> str:
    out = []
    for kind, content in blocks:
        if kind.startswith("heading"):
            out.append("#" * int(kind[-1]) + " " + content)
        elif kind == "text":
            out.append(content)
        elif kind == "table":
            out.append(markdown_table(*content))
        elif kind == "code":
            out.append("```yaml\n" + content.rstrip() + "\n```")
        elif kind == "image":
            out.append(f"![{Path(content).stem}]({_data_uri(content)})")
    return "\n\n".join(out) + "\n"


def _html(blocks: list[tuple[str, Any]]) -> str:
    def inline(text: str) -> str:  # `code` spans
        parts = escape(text).split("`")
        return "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts))

    body = []
    for kind, content in blocks:
        if kind.startswith("heading"):
            body.append(f"<h{kind[-1]}>{escape(content)}</h{kind[-1]}>")
        elif kind == "text":
            body.append(f"<p>{inline(content)}</p>")
        elif kind == "table":
            header, rows = content
            head = "".join(f"<th>{escape(str(h))}</th>" for h in header)
            cells = "".join(
                "<tr>"
                + "".join(f"<td class='{'future' if v == '·' else ''}'>{escape(str(v))}</td>" for v in r)
                + "</tr>"
                for r in rows
            )
            body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{cells}</tbody></table>")
        elif kind == "code":
            body.append(f"<pre>{escape(content)}</pre>")
        elif kind == "image":
            body.append(f"<img alt='{escape(Path(content).stem)}' src='{_data_uri(content)}'>")
    style = (
        "body{font-family:sans-serif;max-width:1100px;margin:2em auto}table{border-collapse:collapse;margin:1em 0}"
        "td,th{border:1px solid #ccc;padding:2px 8px;text-align:right}td.future{color:#bbb;background:#f4f4f4}"
        "img{max-width:100%}pre{background:#f6f6f6;padding:1em;overflow:auto}"
    )
    return f"<!doctype html><html><head><meta charset='utf-8'><title>clframe report</title><style>{style}</style>" \
        f"</head><body>{''.join(body)}</body></html>\n"  # fmt: skip


def write_report(run_dirs: list[str], out: str | Path) -> Path:
    """One self-contained report of one run or several (``.md``: Markdown, ``.html``: HTML; figures embedded):
    headline table, and per run its status, accuracy matrix, plots, config and environment."""
    out = Path(out)
    if out.suffix not in (".md", ".html"):
        raise ValueError(f"-o {out} is invalid; valid choices: a .md or .html file")
    with tempfile.TemporaryDirectory() as tmp:
        blocks = _report_blocks(run_dirs, Path(tmp))
        atomic_write_text(out, _html(blocks) if out.suffix == ".html" else _markdown(blocks))
    return out
