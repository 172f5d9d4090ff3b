"""The two-phase protocol of "Hyperparameters in Continual Learning: a Reality Check" vs tuning on the test stream.

    python benchmarks/two_phase.py [--trials 10] [--methods naive ewc lwf replay derpp] [--seeds 0 1 2]

Phase 1 tunes each method's hyperparameters with Optuna (the ``experiments/hparams_search/<method>.yaml``
search, through ``clframe run -m hparams_search=<method>``) on a *tuning stream*: class-incremental
sklearn digits, 5 x 2 classes (``scenario=split_digits``). Phase 2 evaluates the chosen values on a
different *evaluation stream* of the same scenario: class-incremental Split-MNIST (``scenario=split_mnist``),
seeds ``--seeds``. The conventional protocol tunes the same search directly on Split-MNIST (seed 0) and
reports the best trial; its chosen values are also re-run on the evaluation seeds. The objective is
``cl/avg_acc``. Writes ``<out>/two_phase.md`` and ``two_phase.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

import yaml

TUNE = ["scenario=split_digits"]
EVAL = ["scenario=split_mnist"]
QUIET = ["logger=none", "progress_bar=none", "plots=false"]


def search(method: str, stream: list[str], trials: int, folder: Path) -> dict:
    """One Optuna search through the CLI; returns optimization_results.yaml (best_params, best_value)."""
    if not (folder / "optimization_results.yaml").is_file():
        cmd = [sys.executable, "-m", "clframe", "run", "-m", f"hparams_search={method}", *stream, *QUIET]
        cmd += [f"hydra.sweeper.n_trials={trials}", f"hydra.sweep.dir={folder}"]
        res = subprocess.run(cmd, capture_output=True, text=True)
        if not (folder / "optimization_results.yaml").is_file():  # failed trials (diverged) are part of a search
            raise SystemExit(f"{method} search failed:\n{res.stderr[-3000:]}")
    return yaml.safe_load((folder / "optimization_results.yaml").read_text())


def evaluate(method: str, params: dict, seeds: list[int], folder: Path) -> list[float]:
    """``cl/avg_acc`` of the chosen values on the evaluation stream, one run per seed (one sweep)."""
    from clframe.config import compose
    from clframe.runner import run

    values = []
    for seed in seeds:
        run_dir = folder / f"s{seed}"
        metrics = run_dir / "metrics.json"
        if not metrics.is_file() or json.loads(metrics.read_text())["status"] != "complete":
            overrides = [f"strategy={method}", *EVAL, *QUIET, f"seed={seed}", f"run_dir={run_dir}", "overwrite=true"]
            run(compose([*overrides, *(f"{k}={v}" for k, v in params.items())]))
        values.append(json.loads(metrics.read_text())["metrics"]["cl/avg_acc"])
    return values


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="+", default=["naive", "ewc", "lwf", "replay", "derpp"])
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--out", default="benchmarks/results/two_phase")
    args = parser.parse_args(argv)
    from clframe.io import atomic_write_text

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows, dump = [], {}
    for method in args.methods:
        tuned = search(method, TUNE, args.trials, out / "runs" / f"{method}_tune_digits")
        test = search(method, EVAL, args.trials, out / "runs" / f"{method}_tune_mnist")
        two = evaluate(method, tuned["best_params"], args.seeds, out / "runs" / f"{method}_eval_two_phase")
        conv = evaluate(method, test["best_params"], args.seeds, out / "runs" / f"{method}_eval_conventional")
        dump[method] = {"two_phase": {**tuned, "eval": two}, "conventional": {**test, "eval": conv}}
        fmt = lambda v: (
            f"{100 * statistics.mean(v):.2f} ± {100 * statistics.stdev(v):.2f}" if len(v) > 1 else f"{100 * v[0]:.2f}"
        )  # noqa: E731
        params = lambda p: ", ".join(
            f"{k.split('.')[-1]}={v:.3g}" if isinstance(v, float) else f"{k.split('.')[-1]}={v}" for k, v in p.items()
        )  # noqa: E731
        rows.append(
            f"| {method} | {100 * test['best_value']:.2f} | {fmt(conv)} | {params(test['best_params'])} | "
            f"{100 * tuned['best_value']:.2f} | {fmt(two)} | {params(tuned['best_params'])} | "
            f"{100 * (statistics.mean(conv) - statistics.mean(two)):+.2f} |"
        )
        print(rows[-1], flush=True)
        header = (
            f"## Two-phase tuning (tune on split_digits, evaluate on split_mnist) vs tuning on the test stream\n\n"
            f"{args.trials} Optuna (TPE) trials per search, objective cl/avg_acc, evaluation seeds "
            f"{', '.join(map(str, args.seeds))}; accuracies in %.\n\n"
            "| method | conventional: best trial on split_mnist (seed 0) | its values on split_mnist, seeds | values "
            "| two-phase: best trial on split_digits | its values on split_mnist, seeds | values "
            "| gap (conventional − two-phase) |\n|---|---|---|---|---|---|---|---|\n"
        )
        atomic_write_text(out / "two_phase.md", header + "\n".join(rows) + "\n")
        atomic_write_text(out / "two_phase.json", json.dumps(dump, indent=1))
    print((out / "two_phase.md").read_text())


if __name__ == "__main__":
    main()
