"""Speed benchmark (issue 3): the same Split-MNIST workload three ways, timed in ONE process.

Workload: Split-MNIST class-IL, 5 experiences x 2 classes, MLP 784-400-400-10, SGD lr 0.01,
batch 128, 1 epoch per experience, evaluation on all 5 test splits after each experience.
  1. a plain PyTorch loop over in-memory tensors (the fastest hand-written baseline);
  2. clframe (`clframe.run`: default Fabric engine, default CSV logger, checkpoint + metrics
     written after every experience, random-init evaluation row for FWT; no progress bar);
  3. Avalanche's Naive strategy on the same tensors (accuracy metrics only, no loggers).
All three start from the loaded MNIST tensors and build the 5 experiences inside their timing.
Composing clframe's config (Hydra) is start-up work like the imports: timed and reported
separately (`clframe_compose`), not added to clframe's time.
Each variant runs `--repeats` times interleaved; the best time of each is compared, so the
ratios come from one run on one machine. Also measures `clframe --help` wall time and the
peak memory (max RSS) of a full `clframe run scenario=split_mnist` in a subprocess.

    python benchmarks/speed.py [--repeats 5] [--out runs/bench/speed.json]

(``--out benchmarks/speed.json`` refreshes the recorded run in the repository.)
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

from clframe.data import load_dataset
from clframe.scenarios.splits import split_by_classes

GROUPS = [[0, 1], [2, 3], [4, 5], [6, 7], [8, 9]]
LR, BATCH = 0.01, 128


def mlp() -> nn.Module:
    return nn.Sequential(
        nn.Flatten(), nn.Linear(784, 400), nn.ReLU(), nn.Linear(400, 400), nn.ReLU(), nn.Linear(400, 10)
    )


def plain_loop(data) -> list[list[float]]:
    exps = split_by_classes(*data, GROUPS, task_labels=False)
    torch.manual_seed(0)
    model = mlp()
    seen = torch.zeros(10, dtype=torch.bool)
    rows = []
    for i, exp in enumerate(exps):
        seen[exp.classes] = True
        opt = torch.optim.SGD(model.parameters(), lr=LR)
        gen = torch.Generator().manual_seed(i)
        x_all, y_all = exp.train.x, exp.train.y
        perm = torch.randperm(len(y_all), generator=gen)
        model.train()
        for s in range(0, len(perm), BATCH):
            idx = perm[s : s + BATCH]
            logits = model(x_all[idx]).masked_fill(~seen, -1e4)
            loss = nn.functional.cross_entropy(logits, y_all[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        model.eval()
        with torch.no_grad():
            rows.append(
                [float((model(e.test.x).masked_fill(~seen, -1e4).argmax(1) == e.test.y).float().mean()) for e in exps]
            )
    return rows


def clframe_config(tmp: Path, k: int):
    """Composing the config is start-up work (like the imports), timed separately."""
    from clframe.config import compose

    return compose(
        [
            "scenario=split_mnist",
            "strategy=naive",
            f"strategy.lr={LR}",
            f"strategy.batch_size={BATCH}",
            "trainer.max_epochs=1",
            "progress_bar=none",
            "plots=false",
            f"run_dir={tmp / f'clframe{k}'}",
        ]
    )


def clframe_run(cfg) -> list[list[float]]:
    from clframe.runner import run

    return run(cfg)["accuracy_matrix"]


def avalanche_run(data) -> list[list[float]]:
    from avalanche.benchmarks.scenarios.dataset_scenario import benchmark_from_datasets
    from avalanche.benchmarks.utils import make_avalanche_dataset  # noqa: F401
    from avalanche.benchmarks.utils.classification_dataset import _make_taskaware_tensor_classification_dataset
    from avalanche.evaluation.metrics import accuracy_metrics
    from avalanche.training import Naive
    from avalanche.training.plugins import EvaluationPlugin

    exps = split_by_classes(*data, GROUPS, task_labels=False)

    def ds(d):
        return _make_taskaware_tensor_classification_dataset(d.x, d.y)

    bm = benchmark_from_datasets(train=[ds(e.train) for e in exps], test=[ds(e.test) for e in exps])
    torch.manual_seed(0)
    model = mlp()
    strat = Naive(
        model=model,
        optimizer=torch.optim.SGD(model.parameters(), lr=LR),
        criterion=nn.CrossEntropyLoss(),
        train_mb_size=BATCH,
        train_epochs=1,
        eval_mb_size=2048,
        device="cpu",
        evaluator=EvaluationPlugin(accuracy_metrics(experience=True), loggers=[]),
    )
    rows = []
    for exp in bm.train_stream:
        strat.train(exp)
        res = strat.eval(bm.test_stream)
        rows.append([v for k, v in sorted(res.items()) if k.startswith("Top1_Acc_Exp")])
    return rows


def paired_median(a: list[float], b: list[float]) -> float:
    ratios = sorted(x / y for x, y in zip(a, b))
    return ratios[len(ratios) // 2] if ratios else float("nan")


def timed(fn, *args):
    t0 = time.perf_counter()
    out = fn(*args)
    return time.perf_counter() - t0, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default="runs/bench/speed.json")  # untracked: make bench never edits the repo
    parser.add_argument("--skip-avalanche", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(torch.get_num_threads())
    data = load_dataset("mnist")  # every variant splits it into the 5 experiences inside its timing
    import avalanche.training  # noqa: F401  (import cost outside the timings)
    import lightning.pytorch  # noqa: F401

    times: dict[str, list[float]] = {"plain": [], "clframe": [], "avalanche": [], "clframe_compose": []}
    final: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for k in range(args.repeats):
            sec, cfg = timed(clframe_config, Path(tmp), k)
            times["clframe_compose"].append(sec)
            for name, fn, fargs in (
                ("plain", plain_loop, (data,)),
                ("clframe", clframe_run, (cfg,)),
                ("avalanche", avalanche_run, (data,)),
            ):
                if name == "avalanche" and args.skip_avalanche:
                    continue
                sec, rows = timed(fn, *fargs)
                times[name].append(sec)
                final[name] = rows[-1]
                print(f"[{k}] {name:<10} {sec:7.2f} s  final avg acc {100 * sum(rows[-1]) / len(rows[-1]):.2f}")
    best = {k: min(v) for k, v in times.items() if v}
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "clframe", "--help"], check=True, capture_output=True)
    help_s = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as tmp:
        code = (
            "import resource,sys; from clframe.cli import main; "
            f"main(['run','scenario=split_mnist','strategy=replay','progress_bar=none','run_dir={tmp}/mem']); "
            "print('MAXRSS', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)"
        )
        out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
        peak_mb = int(out.split("MAXRSS")[-1].split()[0]) / 1024
    report = {
        "best_seconds": best,
        "all_seconds": times,
        "clframe_over_plain": best["clframe"] / best["plain"],
        # the same ratio per round (both variants ran back to back), median over rounds: robust to noise
        "clframe_over_plain_paired_median": paired_median(times["clframe"], times["plain"]),
        "avalanche_over_clframe_paired_median": paired_median(times["avalanche"], times["clframe"]),
        "avalanche_over_clframe": best.get("avalanche", float("nan")) / best["clframe"],
        "final_accuracy": final,
        "clframe_help_seconds": help_s,
        "split_mnist_replay_peak_rss_mb": peak_mb,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "self_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: v for k, v in report.items() if k != "all_seconds"}, indent=2))


if __name__ == "__main__":
    main()
