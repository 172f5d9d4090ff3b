"""Path dependence of local unlearning ("On the Impossibility of Retrain Equivalence"), small scale.

    python benchmarks/path_dependence.py --dataset digits --method ga    # also: --dataset mnist, --method npo

The preset ``experiment=path_dependence_digits``: K = 3 class stages {0,1}, {2,3}, {4,5} learned with
replay, then "forget class 1" answered by a *local* method (forget-set gradients only,
``retain_weight=0``) with the same hyperparameters on every path. This driver runs all 3! = 6 stage
orders (``scenario.order``), each with its own retrain oracle (same order, class 1 removed), and
reports per path and across paths (min / max / std) the accuracies before and after unlearning and
the gap to the oracle, plus forget / retain / test curves over unlearning steps for every path.
"""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path

import numpy as np
from unlearning_table import PROTOCOLS  # benchmarks/ is on sys.path when run as a script

KEYS = ("forget_acc", "retain_acc", "test_acc")
# digits: the preset as it is; mnist: the same reduced MNIST protocol as the unlearning table
DATASETS = {"digits": [], "mnist": PROTOCOLS["mnist"]}


def summarise(values: list[float]) -> str:
    v = 100 * np.asarray(values, dtype=float)
    return f"{v.min():.1f} | {v.max():.1f} | {v.max() - v.min():.1f} | {v.std():.2f}"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="digits", choices=sorted(DATASETS))
    parser.add_argument("--method", default="ga")
    parser.add_argument("--out", default="benchmarks/results/path_dependence")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 is fastest on a shared machine)")
    parser.add_argument("--tag", default="", help="suffix of the output files (e.g. for other hyperparameters)")
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides, e.g. unlearning.steps=30")
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    from clframe.config import compose
    from clframe.runner import run
    from clframe.unlearning.plots import plot_curves

    out = Path(args.out)
    paths = {}
    for order in itertools.permutations(range(3)):
        name = "".join(map(str, order))
        cfg = compose(
            [
                "experiment=path_dependence_digits",
                *DATASETS[args.dataset],
                f"unlearning={args.method}",
                "unlearning.retain_weight=0.0",
                f"scenario.order=[{','.join(map(str, order))}]",
                f"seed={args.seed}",
                f"run_dir={out / 'runs' / f'{args.dataset}_{args.method}{args.tag}_{name}'}",
                "overwrite=true",
                "logger=none",
                "progress_bar=none",
                "plots=false",
                f"+evaluators.0.oracle_cache={out / '.oracle_cache'}",
                *args.overrides,
            ]
        )
        result = run(cfg)
        e = next(
            ev["unlearning"]
            for ev, r in zip(result["evaluations"], result["row_events"], strict=True)
            if r["kind"] == "forget"
        )
        paths[name] = e
        print(
            name, {k: round(e[f"unlearn/{k}"], 3) for k in KEYS}, "avg gap", round(e["unlearn/avg_gap"], 3), flush=True
        )
    stages = "{0,1} {2,3} {4,5}"
    lines = [
        f"## path dependence: {args.dataset}, stages {stages} in all 6 orders, "
        f"forget class 1 with {args.method} (local) {' '.join(args.overrides)}\n",
        "| order | before: forget / retain / test | after: forget / retain / test "
        "| oracle: forget / retain / test | avg gap to oracle |",
        "|---|---|---|---|---|",
    ]
    trip = lambda e, who: " / ".join(f"{100 * e[f'{who}/{k}']:.1f}" for k in KEYS)  # noqa: E731
    for name, e in paths.items():
        lines.append(
            f"| {name} | {trip(e, 'original')} | {trip(e, 'unlearn')} | {trip(e, 'oracle')} "
            f"| {e['unlearn/avg_gap']:.3f} |"
        )
    lines += ["", "| quantity (%) | min | max | max − min | std |", "|---|---|---|---|---|"]
    for who, label in (("original", "before unlearning"), ("unlearn", "after unlearning"), ("oracle", "oracle")):
        for k in KEYS:
            lines.append(f"| {label}: {k} | {summarise([e[f'{who}/{k}'] for e in paths.values()])} |")
    for k in ("forget", "retain", "test"):
        lines.append(f"| gap to oracle: {k} | {summarise([e[f'unlearn/gap/{k}'] for e in paths.values()])} |")
    lines.append(f"| average gap | {summarise([e['unlearn/avg_gap'] for e in paths.values()])} |")
    # forget accuracy along the unlearning steps: spread across paths at each probe
    curves = {name: e["unlearn/curve"] for name, e in paths.items()}
    steps = [h["step"] for h in next(iter(curves.values()))]
    lines += [
        "",
        "forget accuracy (%) over unlearning steps, per path:",
        "",
        "| order | " + " | ".join(f"step {s}" for s in steps) + " |",
        "|---" * (len(steps) + 1) + "|",
    ]
    for name, c in curves.items():
        lines.append(f"| {name} | " + " | ".join(f"{100 * h['forget_acc']:.0f}" for h in c) + " |")
    text = "\n".join(lines) + "\n"
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{args.dataset}_{args.method}{args.tag}.md").write_text(text)
    (out / f"{args.dataset}_{args.method}{args.tag}.json").write_text(json.dumps(paths, indent=1))
    plot_curves(
        {f"order {n}": c for n, c in curves.items()},
        out / f"{args.dataset}_{args.method}{args.tag}_paths.png",
        title=f"{args.dataset}: forget class 1 with {args.method}, one line per stage order",
    )
    print(text)


if __name__ == "__main__":
    main()
