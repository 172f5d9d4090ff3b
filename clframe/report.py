"""Text summaries of runs: the table printed after a run and ``clframe compare``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from clframe.io import is_locked

HEADLINE = ("cl/avg_acc", "cl/avg_inc_acc", "cl/forgetting", "cl/bwt", "cl/fwt")


def load_metrics(run_dir: str | Path) -> dict[str, Any]:
    path = Path(run_dir) / "metrics.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: pass a run directory written by `clframe run`")
    metrics = json.loads(path.read_text())
    if metrics.get("status") == "running" and not is_locked(Path(run_dir)):
        metrics["status"] = "interrupted"  # killed (no process holds the run's lock): resume= continues it
    return metrics


def matrix_cell(v: float | None, future: bool, setting: str = "class") -> str:
    """One accuracy-matrix entry in percent: ``·`` for an experience not learned yet (outside domain-IL its
    accuracy is 0 by masking, not a measurement), ``–`` for a column whose classes were all forgotten."""
    if future and setting != "domain":
        return "·"
    return "–" if v is None or v != v else f"{100 * v:.2f}"


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    """A Markdown table (``|`` inside a cell escaped)."""
    esc = lambda v: str(v).replace("|", "\\|")  # noqa: E731
    lines = ["| " + " | ".join(map(esc, header)) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(map(esc, r)) + " |" for r in rows])


#: headline metrics that are not fractions shown in percent (a p-value spans orders of magnitude)
SCIENTIFIC = ("forget_quality",)


def metric_text(key: str, value: float | None) -> str:
    """A headline metric as printed and compared: percent with two decimals, a p-value in scientific notation."""
    if value is None:
        return "–"
    if key.rsplit("/", 1)[-1] in SCIENTIFIC:
        return f"{value:.2e}"
    return f"{100 * value:.2f}"


def format_matrix(R: list[list[float]], setting: str = "class") -> str:
    """The accuracy matrix as printed after a run (cells as :func:`matrix_cell`)."""
    if not R:
        return "(no experience finished)"
    cols = len(R[0])
    lines = ["after \\ on " + " ".join(f"{'exp' + str(j):>7}" for j in range(cols))]
    for i, row in enumerate(R):
        lines.append(f"exp {i:<7}" + " ".join(f"{matrix_cell(v, j > i, setting):>7}" for j, v in enumerate(row)))
    return "\n".join(lines)


def print_summary(result: dict[str, Any]) -> None:
    print(f"\n{result['scenario']} / {result['strategy']} / seed {result['seed']}  [{result['status']}]")
    print("accuracy matrix (%, row: after training on experience i; column: test split of j; ·: not learned yet)")
    print(format_matrix(result["accuracy_matrix"], result.get("setting", "class")))
    undefined = result.get("undefined_metrics") or {}
    for key, value in result["metrics"].items():
        if value is not None:  # None: undefined in this setting (cl/fwt outside domain-IL) or nothing left to ask
            print(f"  {key:<16} {metric_text(key, value):>7}")
    for key, reason in undefined.items():
        print(f"  {key:<16} not reported: {reason}")
    if result.get("run_dir"):
        print(f"results in {result['run_dir']}")


def find_runs(paths: list[str]) -> list[Path]:
    """Run directories among ``paths``: a folder with ``metrics.json`` is a run; any other folder (a sweep's
    ``runs/multirun/<time>``, a benchmark's output) contributes every run below it, in name order."""
    runs: list[Path] = []
    for p in map(Path, paths):
        if (p / "metrics.json").is_file():
            runs.append(p)
        elif p.is_dir():
            found = sorted(m.parent for m in p.rglob("metrics.json"))
            if not found:
                raise FileNotFoundError(f"{p} holds no run (no metrics.json below it)")
            runs.extend(found)
        else:
            raise FileNotFoundError(f"{p} not found: pass run directories or folders of runs")
    return runs


def _unlearning(run_dir: Path) -> str:
    """The run's unlearning method and its options (``npo beta=0.5 steps=50``), from its ``config.yaml``."""
    import yaml  # plain YAML: the saved config is data, nothing in it is instantiated

    path = run_dir / "config.yaml"
    node = (yaml.safe_load(path.read_text()) or {}).get("unlearning") if path.is_file() else None
    if not isinstance(node, dict) or not node.get("name"):
        return ""
    options = " ".join(f"{k}={v}" for k, v in sorted(node.items()) if k != "name" and not isinstance(v, dict | list))
    return f"{node['name']} {options}".strip()


#: config keys that do not change what a run computes (with the seed: what a group of seeds may differ in)
NOT_CONFIG = ("seed", "run_dir", "resume", "overwrite", "plots", "progress_bar", "logger", "keep_checkpoints", "hydra")


def config_key(run_dir: Path) -> str:
    """The run's saved config without its seed and bookkeeping keys: runs with equal keys are seeds of one
    configuration. A run without ``config.yaml`` is a group of its own."""
    import yaml  # plain YAML: the saved config is data

    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        return f"run:{Path(run_dir).resolve()}"
    node = yaml.safe_load(path.read_text()) or {}
    return json.dumps({k: v for k, v in node.items() if k not in NOT_CONFIG}, sort_keys=True, default=str)


def group_runs(run_dirs: list[Path]) -> list[list[Path]]:
    """Runs grouped by :func:`config_key`, groups and runs in first-seen order."""
    groups: dict[str, list[Path]] = {}
    for d in run_dirs:
        groups.setdefault(config_key(d), []).append(d)
    return list(groups.values())


def mean_std_text(key: str, values: list[float]) -> str:
    """``mean ± std`` (sample std) of a metric over seeds, in :func:`metric_text` units; one value: itself."""
    import statistics

    if not values:
        return "–"
    if len(values) == 1:
        return metric_text(key, values[0])
    mean, std = statistics.mean(values), statistics.stdev(values)
    if key.rsplit("/", 1)[-1] in SCIENTIFIC:
        return f"{mean:.2e} ± {std:.1e}"
    return f"{100 * mean:.2f} ± {100 * std:.2f}"


def compare_rows(run_dirs: list[str], per_run: bool = False) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the comparison: scenario, strategy, unlearning method and options, seeds, status,
    then the ``cl/*`` headline metrics and every ``unlearn/*`` / ``retrieval/*`` metric any run reports
    (:func:`metric_text`: percent with two decimals, forget quality as a p-value; ``–``: not reported).
    Runs whose configs differ only in the seed are one row, ``mean ± std`` over its ``n`` seeds
    (``per_run=True``: one row per run)."""
    runs = {d: load_metrics(d) for d in find_runs(run_dirs)}
    extra = sorted({k for m in runs.values() for k in m["metrics"] if k.split("/")[0] in ("unlearn", "retrieval")})
    keys = [*HEADLINE, *extra]
    rows = []
    if per_run:
        header = ["run", "scenario", "strategy", "unlearning", "seed", "status", *keys]
        for d, m in runs.items():
            vals = [metric_text(k, m["metrics"].get(k)) for k in keys]
            rows.append([d.name, m["scenario"], m["strategy"], _unlearning(d), str(m["seed"]), m["status"], *vals])
        return header, rows
    header = ["run", "scenario", "strategy", "unlearning", "n", "seeds", "status", *keys]
    for group in group_runs(list(runs)):
        ms = [runs[d] for d in group]
        first = ms[0]
        status = ",".join(dict.fromkeys(m["status"] for m in ms))
        seeds = ",".join(str(m["seed"]) for m in ms)
        name = group[0].name if len(group) == 1 else f"{group[0].name} (+{len(group) - 1})"
        vals = [mean_std_text(k, [m["metrics"][k] for m in ms if m["metrics"].get(k) is not None]) for k in keys]
        rows.append(
            [name, first["scenario"], first["strategy"], _unlearning(group[0]), str(len(ms)), seeds, status, *vals]
        )
    return header, rows


def compare_table(run_dirs: list[str], fmt: str = "md", per_run: bool = False) -> str:
    """The comparison as Markdown (``md``), ``csv`` or a LaTeX ``tabular`` (``latex``)."""
    header, rows = compare_rows(run_dirs, per_run)
    if fmt == "csv":
        import csv
        import io

        buf = io.StringIO()
        writer = csv.writer(buf)
        writer.writerow(header)
        writer.writerows([[v.replace("–", "") for v in r] for r in rows])
        return buf.getvalue()
    if fmt == "latex":
        esc = lambda v: (  # noqa: E731
            v.replace("\\", "\\textbackslash{}")
            .replace("_", "\\_")
            .replace("%", "\\%")
            .replace("&", "\\&")
            .replace("±", "$\\pm$")
        )
        text_cols = header.index("status") + 1
        lines = ["\\begin{tabular}{" + "l" * text_cols + "r" * (len(header) - text_cols) + "}", "\\toprule"]
        lines.append(" & ".join(esc(h) for h in header) + " \\\\")
        lines.append("\\midrule")
        lines += [" & ".join(esc(v) if v != "–" else "--" for v in r) + " \\\\" for r in rows]
        lines += ["\\bottomrule", "\\end{tabular}"]
        return "\n".join(lines) + "\n"
    if fmt != "md":
        raise ValueError(f"format {fmt!r} is invalid; valid choices: md, csv, latex")
    return markdown_table(header, rows)
