"""The scaling law of forgetting under LoRA (Kalajdzievski 2024) on clframe: pre-train, fine-tune a rank grid, fit.

    python benchmarks/lora_scaling.py                                   # experiment=lora_scaling_tiny, CPU
    python benchmarks/lora_scaling.py --ranks 1 2 4 8 16 32 64 --seeds 0 1   # more points
    python benchmarks/lora_scaling.py --preset lora_scaling_gpu --out runs/lora_scaling_gpu   # real sizes (GPU)
    python benchmarks/lora_scaling.py --base runs/my_base_model         # fine-tune a save_pretrained folder

1. **Pre-training** (full parameters, ``backbone.lora_rank=0``) of the preset's small Llama-style model on the base
   corpus (``scenario.train=base``, the overrides in :data:`PRETRAIN`), as ``clframe run experiment=<preset> ...``
   would run it; its weights are then saved with ``save_pretrained`` next to the run's own tokenizer:
   ``<out>/runs/base_model`` (a folder ``backbone.path`` loads). ``--base DIR`` skips this and uses DIR.
2. **Fine-tuning** with LoRA of rank r for every ``--ranks`` (and ``--seeds``) on the fine-tuning corpus: one
   clframe run each (``<out>/runs/finetune/rank<r>_s<seed>``), exactly ``clframe run experiment=<preset>
   backbone.path=<base> backbone.lora_rank=<r> seed=<seed>``; its learn events end at the preset's
   ``scenario.steps``, after each the ``lm_loss`` evaluator measures forgetting (held-out base text) and the
   fine-tuning loss (held-out fine-tuning text).
3. **The fit**: ``benchmarks/forgetting_law.py <out>/runs/finetune --out <out>`` (tables, JSON, plots).

A rerun reuses finished runs whose saved config equals the composed one (``--fresh`` recomputes). Extra Hydra
overrides go last and apply to the fine-tuning runs (e.g. ``strategy.lr=0.002``).
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

import torch
from forgetting_law import main as fit_main  # benchmarks/ is on sys.path when run as a script
from omegaconf import OmegaConf

import clframe
from clframe.report import load_metrics
from clframe.runner import build, load_checkpoint

#: the pre-training run: the preset's model and corpora, full parameters on the base corpus
PRETRAIN = {
    "lora_scaling_tiny": [
        "scenario.train=base",
        "scenario.steps=[150,300,450,600]",
        "backbone.path=null",
        "backbone.lora_rank=0",
        "strategy.lr=0.003",
        "strategy.batch_size=32",
        "evaluators=[{name:lm_loss,sets:[base,finetune],reference:false}]",
    ],
    "lora_scaling_gpu": [
        "scenario.train=base",
        "scenario.steps=[5000,10000,20000,30000]",
        "backbone.path=null",
        "backbone.lora_rank=0",
        "strategy.lr=0.0006",
        "strategy.batch_size=64",
        "evaluators=[{name:lm_loss,sets:[base,finetune],reference:false}]",
    ],
}
QUIET = ["logger=none", "plots=false"]


def composed(preset: str, overrides: list[str], run_dir: Path):
    return clframe.compose([f"experiment={preset}", *QUIET, *overrides, f"run_dir={run_dir}"])


def finished(run_dir: Path, cfg) -> bool:
    """``run_dir`` holds a complete run of exactly ``cfg`` (its saved config.yaml, read as data)."""
    if not (run_dir / "metrics.json").is_file() or not (run_dir / "config.yaml").is_file():
        return False
    try:
        status = load_metrics(run_dir).get("status")
        saved = OmegaConf.to_container(OmegaConf.load(run_dir / "config.yaml"), resolve=True)
    except Exception:  # noqa: BLE001  (anything unreadable: run it again)
        return False
    mine = OmegaConf.to_container(cfg, resolve=True)
    drop = ("overwrite", "progress_bar")
    return status == "complete" and {k: v for k, v in saved.items() if k not in drop} == {
        k: v for k, v in mine.items() if k not in drop
    }


def run_once(cfg, fresh: bool) -> tuple[dict, bool]:
    """Run ``cfg`` unless a finished identical run is there; returns (metrics, reused)."""
    run_dir = Path(cfg.run_dir)
    if not fresh and finished(run_dir, cfg):
        return load_metrics(run_dir), True
    cfg.overwrite = True
    return clframe.run(cfg), False


def export_base_model(run_dir: Path, out: Path) -> Path:
    """The pre-training run's final weights as a ``save_pretrained`` folder with the run's tokenizer (written
    whole or not at all). The run is this script's own: its config is rebuilt from config.yaml."""
    cfg = OmegaConf.load(run_dir / "config.yaml")
    stream, strategy = build(cfg)
    strategy.load_state_dict(load_checkpoint(run_dir / "checkpoints" / "last.pt")["model"])
    tmp = out.parent / f".{out.name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    strategy.backbone.model.save_pretrained(str(tmp))
    stream.extras["tokenizer"].save_pretrained(str(tmp))
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="lora_scaling_tiny", choices=sorted(PRETRAIN))
    ap.add_argument("--ranks", type=int, nargs="+", default=[1, 4, 16, 64])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--base", help="a save_pretrained folder to fine-tune (skips the pre-training)")
    ap.add_argument("--pretrain-steps", type=int, nargs="+", help="the pre-training events (default: PRETRAIN's)")
    ap.add_argument("--out", default="benchmarks/results/lora_scaling")
    ap.add_argument("--fresh", action="store_true", help="recompute finished runs")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1: share a loaded machine)")
    ap.add_argument("--fit-args", nargs=argparse.REMAINDER, default=[], help="options for forgetting_law.py, last")
    args, overrides = ap.parse_known_args(argv)
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    t0 = time.perf_counter()
    timing: dict[str, float] = {}
    if args.base:
        base = Path(args.base)
    else:
        steps = [f"scenario.steps=[{','.join(map(str, args.pretrain_steps))}]"] if args.pretrain_steps else []
        cfg = composed(args.preset, PRETRAIN[args.preset] + steps, out / "runs" / "pretrain")
        metrics, reused = run_once(cfg, args.fresh)
        base = out / "runs" / "base_model"
        if not reused or not (base / "config.json").is_file():
            export_base_model(Path(cfg.run_dir), base)
        timing["pretrain"] = time.perf_counter() - t0
        last = metrics["evaluations"][-1]["lm_loss"]
        print(f"pre-trained: base CE {last['base/ce']:.4f} (from {last['base/ce_initial']:.4f}), "
              f"finetune CE {last['finetune/ce']:.4f}{' (reused)' if reused else ''}")  # fmt: skip
    runs = out / "runs" / "finetune"
    for seed in args.seeds:
        for rank in args.ranks:
            t1 = time.perf_counter()
            cfg = composed(
                args.preset,
                [f"backbone.path={base.resolve()}", f"backbone.lora_rank={rank}", f"seed={seed}", *overrides],
                runs / f"rank{rank}_s{seed}",
            )
            metrics, reused = run_once(cfg, args.fresh)
            timing[f"rank{rank}_s{seed}"] = time.perf_counter() - t1
            last = metrics["evaluations"][-1]["lm_loss"]
            print(f"rank {rank} seed {seed}: {last['trainable_params']} trainable, step {last['step']}: forgetting "
                  f"{last['base/forgetting']:.4f}, fine-tuning CE {last['finetune/ce']:.4f}"
                  f"{' (reused)' if reused else ''}")  # fmt: skip
    fit = fit_main([str(runs), "--out", str(out), *args.fit_args])
    timing["total"] = time.perf_counter() - t0
    print("seconds:", {k: round(v, 1) for k, v in timing.items()})
    return fit


if __name__ == "__main__":
    main()
