"""Issue 5 numbers: 5-step class-IL retrieval (AC / AM) for naive, replay, CoReS, CL2R (+ NMC),
and NMC on a backbone pretrained on disjoint classes vs fine-tuning and replay.

    python benchmarks/retrieval_compatibility.py retrieval --dataset mnist   # preset retrieval_split_mnist
    python benchmarks/retrieval_compatibility.py retrieval --dataset cifar10 # preset retrieval_split_cifar10
    python benchmarks/retrieval_compatibility.py nmc                         # pretrain MNIST 0-4, stream 5-9
    python benchmarks/retrieval_compatibility.py nmc-cost                    # NMC update vs one feature pass

Each run is the same as ``clframe run experiment=<preset> strategy=<name> seed=<s>``; results
go to ``--runs`` and a markdown table is printed (and written with ``--out``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

PRESETS = {"mnist": "retrieval_split_mnist", "cifar10": "retrieval_split_cifar10"}
PRETRAIN = "+pretrain={dataset: mnist, classes: [0,1,2,3,4], epochs: 1, lr: 0.05, batch_size: 128}"


def run_one(overrides: list[str], run_dir: Path) -> dict:
    from clframe.config import compose
    from clframe.runner import run

    if (run_dir / "metrics.json").is_file():
        m = json.loads((run_dir / "metrics.json").read_text())
        if m["status"] == "complete":
            return m
    cfg = compose([*overrides, f"run_dir={run_dir}", "overwrite=true", "logger=none", "progress_bar=none"])
    return run(cfg)


def cells(*values) -> str:
    return "| " + " | ".join(str(v) for v in values) + " |"


def matrix(m: dict, score: str = "rank1") -> np.ndarray:
    """The compatibility matrix from the per-event rows stored in metrics.json."""
    rows = [ev["retrieval"][score] for ev in m["evaluations"]]
    M = np.full((len(rows), len(rows)), np.nan)
    for i, row in enumerate(rows):
        M[i, : len(row)] = row
    return M


def ac_cell(m: dict) -> str:
    """Strict AC; AC counting ties as compatible (recomputed from the stored compatibility matrix)."""
    from clframe.metrics.compatibility import average_compatibility

    return f"{m['metrics']['retrieval/ac']:.2f}; {average_compatibility(matrix(m), strict=False):.2f}"


def retrieval(args) -> str:
    lines = [
        cells(
            "method",
            "seed",
            "AC (rank-1; with ties)",
            "AM rank-1 (%)",
            "AM mAP (%)",
            "final self rank-1 (%)",
            "avg acc (%)",
            "s/exp",
        ),
        "|---|---|---|---|---|---|---|---|",
    ]
    for strategy in args.strategies:
        for seed in args.seeds:
            m = run_one(
                [f"experiment={PRESETS[args.dataset]}", f"strategy={strategy}", f"seed={seed}", *args.extra],
                Path(args.runs) / f"{args.dataset}_{strategy}_s{seed}",
            )
            r = m["metrics"]
            lines.append(
                cells(
                    strategy,
                    seed,
                    ac_cell(m),
                    f"{100 * r['retrieval/am']:.1f}",
                    f"{100 * r['retrieval/am_map']:.1f}",
                    f"{100 * r['retrieval/final_rank1']:.1f}",
                    f"{100 * r['cl/avg_acc']:.1f}",
                    f"{np.mean(m['seconds_per_experience']):.1f}",
                )
            )
            print(lines[-1], flush=True)
    return "\n".join(lines)


def nmc(args) -> str:
    base = ["experiment=retrieval_split_mnist", "+scenario.classes=[5,6,7,8,9]", PRETRAIN, *args.extra]
    lines = [
        "| method | pretrained backbone | avg acc (%) | forgetting (%) | AC (rank-1; with ties) | AM rank-1 (%) "
        "| s/exp | pretrain s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for strategy, extra in [
        ("nmc", []),
        ("nmc", ["strategy.metric=cosine", "strategy.normalize=true"]),
        ("naive", []),
        ("replay", []),
    ]:
        for seed in args.seeds:
            name = strategy + ("_cos" if extra else "")
            m = run_one(
                [*base, f"strategy={strategy}", *extra, f"seed={seed}"], Path(args.runs) / f"nmc_{name}_s{seed}"
            )
            r = m["metrics"]
            lines.append(
                cells(
                    name,
                    f"MNIST 0-4 ({m['pretrain']['source']})",
                    f"{100 * r['cl/avg_acc']:.1f}",
                    f"{100 * r['cl/forgetting']:.1f}",
                    ac_cell(m),
                    f"{100 * r['retrieval/am']:.1f}",
                    f"{np.mean(m['seconds_per_experience']):.2f}",
                    f"{m['pretrain']['seconds']:.1f}",
                )
            )
            print(lines[-1], flush=True)
    return "\n".join(lines)


def nmc_cost(args) -> str:
    """NMC's learning cost per experience (``after_experience``: fold the experience into the class
    means) next to one bare feature-extraction pass over the same data, in the same process."""
    import time

    import torch

    from clframe.config import compose
    from clframe.metrics.retrieval_eval import embed
    from clframe.runner import build

    cfg = compose(["experiment=retrieval_split_mnist", "+scenario.classes=[5,6,7,8,9]", "strategy=nmc", *args.extra])
    stream, strategy = build(cfg)
    lines = [
        cells("experience", "train samples", "NMC update (s)", "one feature pass (s)", "ratio"),
        "|---|---|---|---|---|",
    ]
    embed(strategy, stream.experiences[0].train.x, torch.device("cpu"))  # warm-up
    for exp in stream.experiences:
        strategy.before_experience(exp)
        t0 = time.perf_counter()
        embed(strategy, exp.train.x, torch.device("cpu"))
        t_pass = time.perf_counter() - t0
        t0 = time.perf_counter()
        strategy.after_experience(exp)
        t_nmc = time.perf_counter() - t0
        lines.append(cells(exp.id, len(exp.train), f"{t_nmc:.3f}", f"{t_pass:.3f}", f"{t_nmc / t_pass:.2f}"))
        print(lines[-1], flush=True)
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=["retrieval", "nmc", "nmc-cost"])
    p.add_argument("--dataset", choices=sorted(PRESETS), default="mnist")
    p.add_argument("--strategies", nargs="+", default=["naive", "replay", "cores", "cl2r"])
    p.add_argument("--seeds", nargs="+", type=int, default=[0])
    p.add_argument("--runs", default="runs/retrieval")
    p.add_argument("--extra", nargs="*", default=[], help="more config overrides, e.g. trainer.max_epochs=1")
    p.add_argument("--out", default=None)
    args = p.parse_args()
    table = {"retrieval": retrieval, "nmc": nmc, "nmc-cost": nmc_cost}[args.what](args)
    print(table)
    if args.out:
        Path(args.out).write_text(table + "\n")


if __name__ == "__main__":
    main()
