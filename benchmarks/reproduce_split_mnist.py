"""Reproduce the Split-MNIST pattern of van de Ven et al. (2019) with clframe (issue 3).

Runs every (scenario, method) pair of the table below with the `split_mnist_vdv` preset
(MLP 2x400, Adam 1e-3, batch 128, 2000 iterations per experience) and writes a Markdown
table of final average accuracy next to the published numbers.

    python benchmarks/reproduce_split_mnist.py [--steps 2000] [--seed 0] [--out benchmarks/split_mnist.md]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

# (scenario, strategy, extra overrides, published accuracy in %)
# published: van de Ven, van Tuyll & Tolias 2022 / van de Ven & Tolias 2019, split MNIST, MLP 2x400
RUNS = [
    ("split_mnist_task", "naive", [], 87.2),
    ("split_mnist_task", "ewc", ["strategy.lam=1e5"], 98.6),
    ("split_mnist_task", "lwf", [], 99.6),
    ("split_mnist", "naive", [], 19.9),
    ("split_mnist", "ewc", ["strategy.lam=1e9"], 20.0),
    ("split_mnist", "lwf", [], 23.9),
    ("split_mnist", "replay", ["strategy.buffer_size=200"], None),
    ("split_mnist", "joint", [], 97.9),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=2000, help="iterations per experience (paper: 2000)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="benchmarks/split_mnist.md")
    parser.add_argument("--runs-dir", default="runs/split_mnist_vdv")
    args = parser.parse_args()
    from clframe.config import compose
    from clframe.runner import run

    lines = [
        "| scenario | method | overrides | avg acc (%) | forgetting (%) | published (%) | gap | seconds |",
        "|---|---|---|---|---|---|---|---|",
    ]
    results = []
    for scenario, strategy, extra, published in RUNS:
        tag = "_".join([scenario, strategy, *[e.split("=")[-1] for e in extra]])
        run_dir = Path(args.runs_dir) / f"{tag}_s{args.seed}"
        overrides = [
            "experiment=split_mnist_vdv",
            f"scenario={scenario}",
            f"strategy={strategy}",
            *extra,
            f"trainer.max_steps={args.steps}",
            f"seed={args.seed}",
            f"run_dir={run_dir}",
            "overwrite=true",
            "progress_bar=none",
            "logger=none",
        ]
        t0 = time.perf_counter()
        m = run(compose(overrides))
        sec = time.perf_counter() - t0
        acc, fgt = 100 * m["metrics"]["cl/avg_acc"], 100 * m["metrics"]["cl/forgetting"]
        gap = "" if published is None else f"{acc - published:+.1f}"
        pub = "" if published is None else f"{published:.1f}"
        lines.append(
            f"| {scenario} | {strategy} | {' '.join(extra)} | {acc:.2f} | {fgt:.2f} | {pub} | {gap} | {sec:.0f} |"
        )
        results.append(
            {
                "scenario": scenario,
                "strategy": strategy,
                "overrides": extra,
                "avg_acc": acc,
                "forgetting": fgt,
                "published": published,
                "seconds": sec,
                "run_dir": str(run_dir),
            }
        )
        print(lines[-1], flush=True)
    Path(args.out).write_text("\n".join(lines) + "\n")
    Path(args.out).with_suffix(".json").write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
