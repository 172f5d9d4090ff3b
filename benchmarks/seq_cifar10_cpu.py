"""Seq-CIFAR-10 class-IL, reduced CPU protocol: final average accuracy of every rehearsal baseline.

Runs ``experiment=seq_cifar10_<method>_cpu`` for naive, ER, DER++, ER-ACE, iCaRL (buffer 200)
and joint in one process (same seed), and prints a markdown table next to Mammoth's published
numbers (ResNet-18, 50 epochs). Usage::

    python benchmarks/seq_cifar10_cpu.py [--seed 0] [--out runs/seq_cifar10_cpu] [method ...]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

PUBLISHED = {"naive": 19.62, "er": 44.79, "derpp": 64.88, "er_ace": None, "icarl": 49.02, "joint": 92.20}


def main() -> None:
    from clframe.config import compose
    from clframe.runner import run

    ap = argparse.ArgumentParser()
    ap.add_argument("methods", nargs="*", default=list(PUBLISHED))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="runs/seq_cifar10_cpu")
    args = ap.parse_args()
    rows = {}
    for m in args.methods:
        t0 = time.perf_counter()
        cfg = compose(
            [
                f"experiment=seq_cifar10_{m}_cpu",
                f"seed={args.seed}",
                f"run_dir={args.out}/{m}_s{args.seed}",
                "overwrite=true",
                "logger=none",
                "plots=false",
                "progress_bar=none",
            ]
        )
        res = run(cfg)
        rows[m] = {
            "avg_acc": 100 * res["metrics"]["cl/avg_acc"],
            "forgetting": 100 * res["metrics"]["cl/forgetting"],
            "seconds": time.perf_counter() - t0,
        }
        print(f"{m}: {rows[m]}", flush=True)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / f"summary_s{args.seed}.json").write_text(json.dumps(rows, indent=2))
    print("\n| method | final avg acc (%) | forgetting (%) | Mammoth (ResNet-18, 50 ep) | seconds |")
    print("|---|---|---|---|---|")
    for m, r in rows.items():
        pub = PUBLISHED.get(m)
        pub = "n/a" if pub is None else pub
        print(f"| {m} | {r['avg_acc']:.2f} | {r['forgetting']:.2f} | {pub} | {r['seconds']:.0f} |")


if __name__ == "__main__":
    main()
