"""DDP scaling on this machine: one run with 2 processes (``trainer.devices=2``, gloo, 1 thread each) vs 1 process
(2 threads), the same global batch, so the same optimiser steps and the same numbers; rounds alternated.

    python benchmarks/ddp_scaling.py [--rounds 3] [--out benchmarks/results/ddp]

Reports the training seconds per experience (``seconds_per_experience`` in metrics.json: training, the
rank-consistency check and evaluation), the whole command's wall time (process start, the worker's imports
and the process group included), and whether both runs gave the same accuracy matrix.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

WORKLOADS = {
    # a CNN on CIFAR-10 class-IL with replay: compute per sample dominates
    "seq_cifar10 cnn replay": [
        "scenario=seq_cifar10", "backbone=cnn", "strategy=replay", "strategy.batch_size=64",
        "trainer.max_epochs=1", "scenario.train_per_class=500", "scenario.test_per_class=200",
    ],
    # a small MLP on digits: per-step overhead (gradient all-reduce, sharding) dominates
    "split_digits mlp er": ["scenario=split_digits", "strategy=er", "strategy.batch_size=32"],
}  # fmt: skip
COMMON = ["trainer.accelerator=cpu", "logger=none", "progress_bar=none", "plots=false"]


def one(overrides: list[str], devices: int, run_dir: Path) -> tuple[float, dict]:
    cmd = [sys.executable, "-m", "clframe", "run", *overrides, *COMMON, f"trainer.devices={devices}"]
    cmd.append(f"run_dir={run_dir}")
    t0 = time.perf_counter()
    res = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if res.returncode:
        raise SystemExit(res.stderr[-3000:])
    return wall, json.loads((run_dir / "metrics.json").read_text())


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workloads", nargs="+", default=list(WORKLOADS))
    parser.add_argument("--out", default="benchmarks/results/ddp")
    args = parser.parse_args(argv)
    lines = [
        f"`python benchmarks/ddp_scaling.py --rounds {args.rounds}` (medians over rounds; 1 process: 2 threads,"
        " 2 processes: 1 thread each)\n",
        "| workload | processes | s / experience | wall s (whole command) | speed-up (per experience) | same matrix |",
        "|---|---|---|---|---|---|",
    ]
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.workloads:
            times: dict[int, list[tuple[float, float]]] = {1: [], 2: []}
            rows: dict[int, list] = {}
            for r in range(args.rounds):
                for devices in (1, 2) if r % 2 == 0 else (2, 1):
                    wall, metrics = one(WORKLOADS[name], devices, Path(tmp) / f"{name.split()[0]}_{devices}_{r}")
                    times[devices].append((statistics.mean(metrics["seconds_per_experience"]), wall))
                    rows[devices] = metrics["rows"]
            base = statistics.median(t for t, _ in times[1])
            same = "yes" if rows[1] == rows[2] else "no"
            for devices in (1, 2):
                train = statistics.median(t for t, _ in times[devices])
                wall = statistics.median(w for _, w in times[devices])
                lines.append(f"| {name} | {devices} | {train:.2f} | {wall:.1f} | {base / train:.2f}x | {same} |")
    text = "\n".join(lines) + "\n"
    print(text)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "ddp_scaling.md").write_text(text)


if __name__ == "__main__":
    main()
