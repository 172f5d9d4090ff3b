"""Fit the scaling law of forgetting to a sweep's run directories, and plot it.

    python benchmarks/forgetting_law.py RUN_DIR_OR_SWEEP_DIR [...] --out DIR
        [--forget-set base] [--task-set finetune] [--metric forgetting|ce_to_initial|kl_to_initial]
        [--min-step 0] [--holdout last-step|none|rank:R]

Every run directory (a folder with ``metrics.json``; a sweep folder contributes every run below it) must have
run the ``lm_loss`` evaluator (``experiment=lora_scaling_tiny`` / ``lora_scaling_gpu``). Each of its events is
one point: ``P`` = trainable parameters (the LoRA adapters), ``N`` = optimiser steps so far, the forgetting on
``--forget-set`` (``forgetting``: increase of cross-entropy on held-out base text since the pre-trained model;
``ce_to_initial``: the paper's L_f, cross-entropy against the pre-trained model's predictions) and the
fine-tuning loss (cross-entropy on held-out ``--task-set`` text). Fits (``clframe.metrics.scaling``, Kalajdzievski
2024): ``F = A * (P**alpha * N)**beta + E`` (Eq. 6) with standard errors, RMSE and R² on the fitted points and on
the held-out ones (default: each run's last step, i.e. extrapolation in steps), and ``F = -c * L_ft + s``
(Eq. 4) with Pearson / Spearman correlations. Writes ``DIR/forgetting_law.md`` (tables), ``forgetting_law.json``
(every point and both fits), ``forgetting_vs_steps.png`` (one curve per rank, the fitted law drawn through
it) and ``forgetting_vs_ft_loss.png``.

Run directories are untrusted input: only their ``metrics.json`` is read, as JSON (size-capped, every number
checked finite); nothing in them is unpickled, imported or executed.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np

from clframe.io import atomic_write_text, write_json
from clframe.metrics.scaling import fit_forgetting_law, fit_linear_relation
from clframe.plots import _pyplot, _save
from clframe.report import find_runs, markdown_table
from clframe.runner import _none_for_nan

EVALUATOR = "lm_loss"
METRICS = ("forgetting", "ce_to_initial", "kl_to_initial")
MAX_BYTES = 64 * 2**20  # a metrics.json larger than this is refused (untrusted input)


class RunError(ValueError):
    """A run directory that cannot be used, with the reason."""


def read_metrics(run_dir: Path) -> dict:
    """``metrics.json`` of ``run_dir`` as plain JSON (no pickle, no code), size-capped."""
    path = run_dir / "metrics.json"
    if not path.is_file():
        raise RunError(f"{run_dir}: no metrics.json")
    if path.stat().st_size > MAX_BYTES:
        raise RunError(f"{path}: larger than {MAX_BYTES // 2**20} MiB, refused")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise RunError(f"{path}: not readable JSON ({err})") from None
    if not isinstance(data, dict):
        raise RunError(f"{path}: expected a JSON object")
    return data


def _number(value, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise RunError(f"{what} is not a finite number: {value!r}")
    return float(value)


def collect(run_dirs: list[Path], forget_set: str, task_set: str, metric: str) -> tuple[list[dict], list[str]]:
    """One point per learn event of every run: ``run``, ``seed``, ``rank``, ``P``, ``N``, ``F``, ``L_ft``; and the
    runs skipped, with why."""
    points, skipped = [], []
    for run_dir in run_dirs:
        try:
            data = read_metrics(run_dir)
            evaluations = data.get("evaluations")
            events = data.get("row_events") or [{}] * len(evaluations or [])
            if not isinstance(evaluations, list) or not evaluations:
                raise RunError(f"{run_dir}: no evaluations")
            seed = data.get("seed") if isinstance(data.get("seed"), int) else 0
            found = 0
            for i, (ev, row) in enumerate(zip(evaluations, events)):
                m = ev.get(EVALUATOR) if isinstance(ev, dict) else None
                if not isinstance(m, dict) or (isinstance(row, dict) and row.get("kind", "learn") != "learn"):
                    continue
                where = f"{run_dir} event {i}"
                f_key, t_key = f"{forget_set}/{metric}", f"{task_set}/ce"
                if f_key not in m or t_key not in m:
                    raise RunError(f"{where}: no {f_key!r} / {t_key!r} (sets measured: {_sets(m)})")
                points.append(
                    {
                        "run": run_dir.name,
                        "seed": seed,
                        "rank": int(_number(m.get("lora_rank", 0), f"{where} lora_rank")),
                        "P": _number(m.get("trainable_params"), f"{where} trainable_params"),
                        "N": _number(m.get("step"), f"{where} step"),
                        "F": _number(m[f_key], f"{where} {f_key}"),
                        "L_ft": _number(m[t_key], f"{where} {t_key}"),
                    }
                )
                found += 1
            if not found:
                raise RunError(f"{run_dir}: no {EVALUATOR} evaluation (run it with evaluators=[{{name: lm_loss}}])")
        except RunError as err:
            skipped.append(str(err))
    return points, skipped


def _sets(m: dict) -> list[str]:
    return sorted({k.split("/")[0] for k in m if "/" in k})


def holdout_mask(points: list[dict], rule: str) -> np.ndarray:
    """Which points the law is scored on but not fitted to: ``last-step`` (each run's last event), ``none``,
    ``rank:R`` (every point of LoRA rank R)."""
    if rule == "none":
        return np.zeros(len(points), dtype=bool)
    if rule == "last-step":
        last = {}
        for p in points:
            last[p["run"]] = max(last.get(p["run"], 0.0), p["N"])
        return np.array([p["N"] == last[p["run"]] for p in points])
    if rule.startswith("rank:") and rule[5:].isdigit():
        return np.array([p["rank"] == int(rule[5:]) for p in points])
    raise SystemExit(f"error: --holdout={rule!r} is invalid; valid choices: last-step, none, rank:<R>")


def fit_points(points: list[dict], holdout: str, min_step: float) -> dict:
    """Both fits of the paper on the points at ``N >= min_step``."""
    kept = [p for p in points if p["N"] >= min_step]
    P, N, F, L = (np.array([p[k] for p in kept]) for k in ("P", "N", "F", "L_ft"))
    mask = holdout_mask(kept, holdout)
    law = fit_forgetting_law(P, N, F, holdout=mask)
    relation = fit_linear_relation(L, F)
    return {"points": kept, "holdout": mask.tolist(), "law": law, "relation": relation}


def _pm(value: float, se: float, digits: int = 4) -> str:
    return f"{value:.{digits}g} ± {se:.2g}" if math.isfinite(se) else f"{value:.{digits}g} (± n/a)"


def tables(result: dict, args, command: str) -> str:
    law, rel = result["law"], result["relation"]
    p, se = law.params, law.stderr
    lines = [
        f"`{command}`",
        "",
        f"Forgetting: `{args.forget_set}/{args.metric}`; fine-tuning loss: `{args.task_set}/ce` (held-out); "
        f"{law.n_fit} points fitted, {law.n_holdout} held out (`--holdout {args.holdout}`), "
        f"steps >= {args.min_step:g}.",
        "",
        f"**Shifted power law** `F = A * (P^alpha * N)^beta + E` (Kalajdzievski 2024, Eq. 6; fitted by {law.method})",
        "",
        markdown_table(
            ["A", "alpha", "beta (exponent of N)", "alpha*beta (exponent of P)", "E (shift)"],
            [
                [
                    _pm(p["A"], se["A"]),
                    _pm(p["alpha"], se["alpha"]),
                    _pm(p["beta"], se["beta"]),
                    _pm(p["exponent_P"], se["exponent_P"]),
                    _pm(p["E"], se["E"]),
                ]
            ],
        ),  # fmt: skip
        "",
        markdown_table(
            ["", "points", "RMSE", "R²"],
            [
                ["fitted", str(law.n_fit), f"{law.rmse:.4g}", f"{law.r2:.4f}"],
                ["held out", str(law.n_holdout), f"{law.holdout_rmse:.4g}", f"{law.holdout_r2:.4f}"],
            ],
        ),
        "",
        "**Fine-tuning loss vs forgetting** `F = -c * L_ft + s` (Eq. 4), all points",
        "",
        markdown_table(
            ["c", "s", "Pearson r", "R²", "p-value", "Spearman rho", "n"],
            [
                [
                    _pm(rel["c"], rel["slope_stderr"]),
                    _pm(rel["s"], rel["intercept_stderr"]),
                    f"{rel['r']:.4f}",
                    f"{rel['r2']:.4f}",
                    f"{rel['p_value']:.2g}",
                    f"{rel['spearman_rho']:.4f}",
                    str(rel["n"]),
                ]
            ],
        ),  # fmt: skip
        "",
        "**Points** (`*`: held out)",
        "",
        markdown_table(
            ["run", "seed", "rank", "P (trainable)", "N (steps)", "forgetting", "fit", "fine-tuning loss"],
            [
                [
                    p_["run"],
                    str(p_["seed"]),
                    str(p_["rank"]),
                    f"{p_['P']:.0f}",
                    f"{p_['N']:.0f}" + ("*" if h else ""),
                    f"{p_['F']:.4f}",
                    f"{float(law.predict(p_['P'], p_['N'])):.4f}",
                    f"{p_['L_ft']:.4f}",
                ]
                for p_, h in zip(result["points"], result["holdout"])
            ],
        ),  # fmt: skip
    ]
    return "\n".join(lines) + "\n"


def plot(result: dict, out: Path, metric_label: str) -> list[Path]:
    plt = _pyplot()
    law, rel, points, held = result["law"], result["relation"], result["points"], result["holdout"]
    by_p: dict[float, list[tuple[dict, bool]]] = {}
    for p, h in zip(points, held):
        by_p.setdefault(p["P"], []).append((p, h))
    colours = plt.cm.viridis(np.linspace(0, 0.9, len(by_p)))
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    n_all = np.array([p["N"] for p in points])
    grid = np.geomspace(n_all.min(), n_all.max(), 100)
    for colour, (P, group) in zip(colours, sorted(by_p.items())):
        rank = group[0][0]["rank"]
        for p, h in group:
            ax.scatter(p["N"], p["F"], color=colour, facecolor="none" if h else colour, s=30, zorder=3)
        ax.plot(grid, law.predict(P, grid), color=colour, lw=1.3, label=f"rank {rank} (P={P:.0f})")
    ax.set_xscale("log")
    ax.set_xlabel("optimiser steps N")
    ax.set_ylabel(metric_label)
    ax.set_title(
        f"F = A (P^α N)^β + E: α={law.params['alpha']:.3g}, β={law.params['beta']:.3g}; "
        f"R² {law.r2:.3f} (held out {law.holdout_r2:.3f}, hollow)",
        fontsize=8,
    )
    ax.legend(fontsize=7)
    paths = [_save(fig, out / "forgetting_vs_steps.png")]
    fig, ax = plt.subplots(figsize=(6.0, 4.4))
    for colour, (_, group) in zip(colours, sorted(by_p.items())):
        ax.scatter([p["L_ft"] for p, _ in group], [p["F"] for p, _ in group], color=colour, s=25,
                   label=f"rank {group[0][0]['rank']}")  # fmt: skip
    xs = np.linspace(min(p["L_ft"] for p in points), max(p["L_ft"] for p in points), 50)
    ax.plot(xs, rel["slope"] * xs + rel["intercept"], "k--", lw=1)
    ax.set_xlabel("fine-tuning loss (held-out cross-entropy)")
    ax.set_ylabel(metric_label)
    ax.set_title(f"F = -c L_ft + s: c={rel['c']:.3g}, s={rel['s']:.3g}, r={rel['r']:.3f}", fontsize=9)
    ax.legend(fontsize=7)
    paths.append(_save(fig, out / "forgetting_vs_ft_loss.png"))
    return paths


def parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", help="run directories or folders of runs (a sweep)")
    ap.add_argument("--out", required=True, help="folder for forgetting_law.md / .json and the plots")
    ap.add_argument("--forget-set", default="base", help="the lm_loss set forgetting is measured on")
    ap.add_argument(
        "--task-set", default="finetune", help="the lm_loss set whose cross-entropy is the fine-tuning loss"
    )
    ap.add_argument("--metric", default="forgetting", choices=METRICS, help="which forgetting measure to fit")
    ap.add_argument("--min-step", type=float, default=0, help="fit only points with at least this many steps")
    ap.add_argument("--holdout", default="last-step", help="last-step | none | rank:<R> (scored, not fitted)")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse(argv)
    try:
        run_dirs = find_runs(args.runs)
    except FileNotFoundError as err:
        raise SystemExit(f"error: {err}") from None
    points, skipped = collect(run_dirs, args.forget_set, args.task_set, args.metric)
    for why in skipped:
        print(f"skipped: {why}", file=sys.stderr)
    if not points:
        raise SystemExit("error: no run with lm_loss evaluations among " + ", ".join(args.runs))
    try:
        result = fit_points(points, args.holdout, args.min_step)
    except ValueError as err:
        raise SystemExit(f"error: cannot fit ({err})") from None
    out = Path(args.out)
    command = "python benchmarks/forgetting_law.py " + " ".join(argv if argv is not None else sys.argv[1:])
    text = tables(result, args, command)
    atomic_write_text(out / "forgetting_law.md", text)
    labels = {"forgetting": f"forgetting: Δ cross-entropy on {args.forget_set}",
              "ce_to_initial": f"L_f: CE to the pre-trained model on {args.forget_set}",
              "kl_to_initial": f"KL to the pre-trained model on {args.forget_set}"}  # fmt: skip
    plots = plot(result, out, labels[args.metric])
    payload = {
        "command": command,
        "options": vars(args),
        "skipped": skipped,
        "points": result["points"],
        "holdout": result["holdout"],
        "law": result["law"].to_dict(),
        "relation": result["relation"],
        "plots": [str(p) for p in plots],
    }
    write_json(out / "forgetting_law.json", _none_for_nan(payload))
    print(text)
    return payload


if __name__ == "__main__":
    main()
