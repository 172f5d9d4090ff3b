"""Per-step cost of the training engines (issue 3): the same strategy, the same batches, three ways.

Split-MNIST experience 0 (digits 0/1), MLP 784-400-400, SGD lr 0.01, batch 128, ``--epochs`` epochs:
  1. hand-written loop: ``strategy.training_loss(batch)``, backward, SGD step;
  2. ``trainer.engine=fabric`` (clframe's default loop, ``clframe.fit.fit``);
  3. ``trainer.engine=lightning`` (``lightning.pytorch.Trainer.fit``).
Rounds are interleaved in one process; best-of and the median per-step overhead vs the hand loop
are printed.

    python benchmarks/engine_overhead.py [--rounds 5] [--epochs 3]
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    from clframe.config import compose
    from clframe.fit import Engine, fit
    from clframe.runner import build

    base = ["scenario=split_mnist", "strategy=naive", "logger=none", "progress_bar=none"]
    base.append(f"trainer.max_epochs={args.epochs}")
    cfgs = {e: compose([*base, f"trainer.engine={e}"]) for e in ("fabric", "lightning")}

    def prepared(cfg):  # one strategy per variant: a module set up by Fabric cannot go to a Trainer afterwards
        stream, strategy = build(cfg)
        strategy.before_experience(stream.experiences[0])
        return strategy, strategy.train_dataloader_for(stream.experiences[0])

    hand_strategy, loader = prepared(cfgs["fabric"])

    def hand() -> None:
        opt = hand_strategy.configure_optimizers()
        for _ in range(args.epochs):
            for batch in loader:
                loss = hand_strategy.training_loss(batch)
                opt.zero_grad()
                loss.backward()
                opt.step()

    runs = {"hand loop": hand}
    for engine, cfg in cfgs.items():
        strategy, engine_loader = prepared(cfg)
        settings = Engine.from_config(cfg)
        runs[f"engine={engine}"] = lambda s=strategy, ld=engine_loader, c=settings: fit(s, ld, c)
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(args.rounds):
        for name, fn in runs.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    steps = args.epochs * len(loader)
    print(f"{steps} optimiser steps per run, {args.rounds} rounds\n")
    print("| variant | best (s) | median overhead per step vs hand loop (ms) | median ratio |")
    print("|---|---|---|---|")
    for name, ts in times.items():
        diffs = [(t - h) / steps * 1e3 for t, h in zip(ts, times["hand loop"])]
        ratios = [t / h for t, h in zip(ts, times["hand loop"])]
        print(f"| {name} | {min(ts):.3f} | {statistics.median(diffs):.3f} | {statistics.median(ratios):.3f} |")


if __name__ == "__main__":
    main()
