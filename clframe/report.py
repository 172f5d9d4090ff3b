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


def format_matrix(R: list[list[float]]) -> str:
    if not R:
        return "(no experience finished)"
    cols = len(R[0])
    lines = ["after \\ on " + " ".join(f"{'exp' + str(j):>7}" for j in range(cols))]
    for i, row in enumerate(R):
        # None / NaN: a column whose classes were all deliberately forgotten (no longer asked)
        lines.append(f"exp {i:<7}" + " ".join(f"{'–':>7}" if v is None or v != v else f"{100 * v:7.2f}" for v in row))
    return "\n".join(lines)


def print_summary(result: dict[str, Any]) -> None:
    print(f"\n{result['scenario']} / {result['strategy']} / seed {result['seed']}  [{result['status']}]")
    print("accuracy matrix (%, row: after training on experience i; column: test split of j)")
    print(format_matrix(result["accuracy_matrix"]))
    undefined = result.get("undefined_metrics") or {}
    for key, value in result["metrics"].items():
        if value is not None:  # None: undefined in this setting (cl/fwt outside domain-IL) or nothing left to ask
            print(f"  {key:<16} {100 * value:7.2f}")
    for key, reason in undefined.items():
        print(f"  {key:<16} not reported: {reason}")
    if result.get("run_dir"):
        print(f"results in {result['run_dir']}")


def compare_table(run_dirs: list[str]) -> str:
    rows = ["| run | scenario | strategy | seed | " + " | ".join(HEADLINE) + " |"]
    rows.append("|" + "---|" * (4 + len(HEADLINE)))
    for d in run_dirs:
        m = load_metrics(d)
        vals = [f"{100 * m['metrics'][k]:.2f}" if m["metrics"].get(k) is not None else "–" for k in HEADLINE]
        rows.append(f"| {Path(d).name} | {m['scenario']} | {m['strategy']} | {m['seed']} | " + " | ".join(vals) + " |")
    return "\n".join(rows)
