"""Sweep throughput: N short runs as one ``clframe run -m`` sweep (imports paid once) vs N separate
``clframe run`` processes (imports paid N times) vs the sweep through submitit's local executor
(``launcher=local``: one process per job, as on SLURM). Runs per minute, rounds alternated.

    python benchmarks/sweep_throughput.py [--n 6] [--rounds 2]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RUN = ["scenario=split_digits", "strategy=naive", "logger=none", "progress_bar=none", "plots=false"]


def clframe(*args: str) -> None:
    res = subprocess.run([sys.executable, "-m", "clframe", "run", *args], capture_output=True, text=True)
    if res.returncode:
        raise SystemExit(res.stderr[-2000:])


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=6)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args(argv)
    seeds = ",".join(str(i) for i in range(args.n))
    variants = {
        "one sweep (basic launcher, one process)": lambda d: clframe(
            "-m", *RUN, f"seed={seeds}", f"hydra.sweep.dir={d}"
        ),
        "separate processes": lambda d: [clframe(*RUN, f"seed={i}", f"run_dir={d}/{i}") for i in range(args.n)],
        "sweep via launcher=local (submitit)": lambda d: clframe(
            "-m", "launcher=local", *RUN, f"seed={seeds}", f"hydra.sweep.dir={d}"
        ),
    }
    times = {k: [] for k in variants}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for k, fn in variants.items():
                t0 = time.perf_counter()
                fn(Path(tmp) / f"{r}_{len(times[k])}_{k.split()[0]}")
                times[k].append(time.perf_counter() - t0)
    print(f"{args.n} runs of `clframe run {' '.join(RUN)}`, {args.rounds} rounds (median):\n")
    print("| variant | seconds for N runs | runs per minute |\n|---|---|---|")
    for k, v in times.items():
        t = statistics.median(v)
        print(f"| {k} | {t:.1f} | {60 * args.n / t:.1f} |")


if __name__ == "__main__":
    main()
