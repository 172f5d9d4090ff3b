"""DESIRE vs LoRA baselines / NMC / ablations on split CIFAR-10 (reduced CPU protocol).

For each pretraining variant (``disjoint``: preset desire_cifar10, pretrain on classes 0-3;
``overlap``: preset desire_cifar10_leakage, pretrain on 6-9 which the stream contains) the first
run (DESIRE) pretrains the ViT inside the framework and saves it; every other method loads that
same backbone (``pretrain.path``), so all methods start from identical weights. Each run is a
normal ``clframe run``; the table is written to ``--out`` (markdown) and ``<out>.json``.
Restartable: a method whose run directory already holds a complete metrics.json is not re-run.

    python benchmarks/desire_cifar10.py [--runs runs/desire_cifar10] [--out benchmarks/results/desire_cifar10.md]
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

METHODS = {  # label -> overrides on top of the preset (most important first: the script is restartable)
    "DESIRE": ["strategy=desire"],
    "NMC, frozen pretrained ViT": ["strategy=nmc"],
    "sequential LoRA fine-tuning": ["strategy=lora_finetune"],
    "LoRA + refinement only": ["strategy=lora_refine"],
    "DESIRE w/o consolidation": ["strategy=desire", "strategy.consolidate=false"],
    "DESIRE, per-sample feature consolidation": ["strategy=desire", "strategy.consolidation_loss=features"],
    "DESIRE w/o refinement": ["strategy=desire", "strategy.refine=false"],
    "joint LoRA (upper bound)": ["strategy=lora_joint"],
}
VARIANTS = {
    "disjoint": ("desire_cifar10", list(METHODS)),
    "overlap": ("desire_cifar10_leakage", ["DESIRE", "NMC, frozen pretrained ViT"]),
}


def trainable_per_task(cfg) -> int:
    """Parameters that receive gradients during one experience (after the strategy's set-up)."""
    from clframe.runner import build

    stream, strategy = build(cfg)
    strategy.before_experience(stream.experiences[0])
    if strategy.train_dataloader_for(stream.experiences[0]) is None:
        return 0
    return sum(p.numel() for p in strategy.parameters() if p.requires_grad)


def main() -> None:
    from clframe.config import compose
    from clframe.runner import run

    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", default="runs/desire_cifar10")
    ap.add_argument("--out", default="benchmarks/results/desire_cifar10.md")
    ap.add_argument("--quick", action="store_true", help="1 epoch everywhere (smoke test of the script)")
    ap.add_argument("--methods", nargs="*", default=None, help="only these labels (e.g. to re-time two methods)")
    args = ap.parse_args()
    extra = ["trainer.max_epochs=1", "pretrain.epochs=1"] if args.quick else []
    base = ["logger=none", "progress_bar=none", "plots=false", *extra]
    rows = []
    for variant, (preset, labels) in VARIANTS.items():
        pretrained = None
        for label in labels:
            if args.methods and label not in args.methods:
                continue
            run_dir = Path(args.runs) / variant / re.sub(r"[^A-Za-z0-9_+-]", "", label.replace(" ", "_"))
            overrides = [f"experiment={preset}", *METHODS[label], f"run_dir={run_dir}", "overwrite=true", *base]
            if pretrained is not None:
                overrides.append(f"pretrain.path={pretrained}")
            done = run_dir / "metrics.json"
            if done.is_file() and json.loads(done.read_text())["status"] == "complete":
                res = json.loads(done.read_text())  # finished by an earlier invocation: reuse
            else:
                res = run(compose(overrides))
            if pretrained is None:
                pretrained = Path(res["run_dir"]) / "checkpoints" / "pretrained_backbone.pt"
            m, secs = res["metrics"], res["seconds_per_experience"]
            row = {
                "variant": variant,
                "method": label,
                "avg_acc": m["cl/avg_acc"],
                "avg_inc_acc": m["cl/avg_inc_acc"],
                "forgetting": m["cl/forgetting"],
                "sec_per_exp": sum(secs) / len(secs),
                "trainable_per_task": trainable_per_task(compose(overrides)),
                "run_dir": str(run_dir),
                "pretrain_acc": (res.get("pretrain") or {}).get("train_acc"),
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
    Path(args.out).with_suffix(".json").write_text(json.dumps(rows, indent=1))
    lines = [
        "| pretraining | method | final avg acc | avg incremental acc | forgetting | s / experience "
        "| trainable params / task |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['variant']} | {r['method']} | {100 * r['avg_acc']:.1f} | {100 * r['avg_inc_acc']:.1f} | "
            f"{100 * r['forgetting']:.1f} | {r['sec_per_exp']:.1f} | {r['trainable_per_task']:,} |"
        )
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
