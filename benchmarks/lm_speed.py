"""Tokens per second of clframe's LM fine-tuning vs a plain PyTorch loop over the same Hugging Face model.

    python benchmarks/lm_speed.py [--rounds 5] [--steps 60] [--hidden 128] [--layers 4]

Both train the same ``transformers`` Llama-style model (same initial weights, AdamW lr 3e-3) on the same
batches of ``scenario=fictitious_authors`` (100 authors x 10 pairs, batch 32):
  1. plain loop: ``model(input_ids, attention_mask, labels).loss`` (prompt and padding labelled -100),
     backward, step — what a user writes without a framework;
  2. clframe: ``clframe.fit.fit`` (the Fabric loop, ``Strategy.training_step`` -> the answer-token NLL).
Rounds alternate in one process; the ratio is the median over rounds of the per-round time ratio
(clframe / plain), so machine noise hits both sides. Tokens are the non-padding tokens of the batches.
Peak RSS (``ru_maxrss``) is measured in a separate child process per variant.
Results: benchmarks/results/lm_speed.md.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
import warnings


def setup(args):
    import torch

    from clframe.config import compose
    from clframe.fit import Engine
    from clframe.runner import build

    cfg = compose(
        [
            "scenario=fictitious_authors",
            "scenario.n_authors=100",
            "scenario.qa_per_author=10",
            "scenario.forget=0",
            "backbone=causal_lm",
            f"backbone.hidden_size={args.hidden}",
            f"backbone.layers={args.layers}",
            "strategy=naive",
            f"trainer.max_steps={args.steps}",
            "trainer.max_epochs=-1",
            "logger=none",
            "progress_bar=none",
        ]
    )
    stream, strategy = build(cfg)
    exp = stream.experiences[0]
    strategy.before_experience(exp)
    batches = []
    for batch in strategy.train_dataloader_for(exp):
        batches.append(batch)
        if len(batches) == args.steps:
            break
    while len(batches) < args.steps:
        batches += batches[: args.steps - len(batches)]
    tokens = sum(int((b["x"][:, 0] != strategy.backbone.pad_id).sum()) for b in batches)
    return cfg, strategy, batches, tokens, Engine.from_config(cfg), torch


def plain_loop(strategy, batches, torch, lr: float):
    model = strategy.backbone.model
    pad = strategy.backbone.pad_id
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    model.train()
    for b in batches:
        ids, answer = b["x"][:, 0], b["x"][:, 1]
        labels = ids.masked_fill(answer == 0, -100)
        loss = model(input_ids=ids, attention_mask=(ids != pad).long(), labels=labels).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()


class Fixed:
    """The same list of batches every epoch (so both variants see exactly the same data)."""

    def __init__(self, batches):
        self.batches = batches

    def __iter__(self):
        return iter(self.batches)

    def __len__(self):
        return len(self.batches)


def measure(args) -> dict:
    import copy

    from clframe.fit import fit

    cfg, strategy, batches, tokens, engine, torch = setup(args)
    torch.set_num_threads(args.threads)
    plain_model = copy.deepcopy(strategy)
    times = {"plain": [], "clframe": []}
    for _ in range(args.rounds):
        t0 = time.perf_counter()
        plain_loop(plain_model, batches, torch, float(cfg.strategy.lr))
        times["plain"].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        fit(strategy, Fixed(batches), engine)
        times["clframe"].append(time.perf_counter() - t0)
    ratios = [c / p for c, p in zip(times["clframe"], times["plain"])]
    return {
        "tokens_per_round": tokens,
        "params": sum(p.numel() for p in strategy.parameters()),
        "tokens_per_s": {k: tokens / statistics.median(v) for k, v in times.items()},
        "ratio_median": statistics.median(ratios),
        "ratios": ratios,
    }


def peak_rss(variant: str, args) -> float:
    """Peak RSS (MB) of a child process that runs one variant once."""
    code = (
        "import sys, resource; sys.argv=['x'] + sys.argv[1:]; "
        "import lm_speed as b; a = b.parse(sys.argv[1:]); cfg, s, bs, t, e, torch = b.setup(a); "
        "torch.set_num_threads(a.threads); "
        + (
            "b.plain_loop(s, bs, torch, float(cfg.strategy.lr))"
            if variant == "plain"
            else "from clframe.fit import fit; fit(s, b.Fixed(bs), e)"
        )
        + "; print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)"
    )
    argv = [f"--steps={args.steps}", f"--hidden={args.hidden}", f"--layers={args.layers}", f"--threads={args.threads}"]
    out = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, cwd=sys.path[0])
    if out.returncode:
        raise SystemExit(out.stderr[-2000:])
    return int(out.stdout.split()[-1]) / 1024


def parse(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", default=None, help="also write the numbers here")
    return parser.parse_args(argv)


def main(argv=None) -> None:
    warnings.filterwarnings("ignore")
    args = parse(argv)
    result = measure(args)
    result["peak_rss_mb"] = {v: peak_rss(v, args) for v in ("plain", "clframe")}
    print(
        f"model: {result['params']:,} parameters; {result['tokens_per_round']:,} tokens per round of {args.steps} steps"
    )
    for k, v in result["tokens_per_s"].items():
        print(f"  {k:<8} {v:10.0f} tokens/s   peak RSS {result['peak_rss_mb'][k]:.0f} MB")
    rounds = ", ".join(f"{r:.3f}" for r in result["ratios"])
    print(f"  clframe / plain time: median {result['ratio_median']:.3f} (rounds: {rounds})")
    print(f"  (this process's peak RSS: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
