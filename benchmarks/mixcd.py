"""mix-cd vs uniform rehearsal at the same compute budget (An Efficient Rehearsal Scheme for Catastrophic Forgetting
Mitigation during Multi-stage Fine-tuning), on a multi-stage causal-LM stream and on class-incremental Split-MNIST.

    python benchmarks/mixcd.py [--streams lm vision] [--seeds 0 1 2] [--lm-seeds 0 1 2] [--out benchmarks/results/mixcd]
                               [--lm-preset mixcd_lm_gpu]   (the GPU-size LM stream; not run on the CPU protocol)

Every run is exactly ``clframe run experiment=<preset> strategy=<method> seed=<s>`` (``mixcd_lm_tiny`` /
``mixcd_split_mnist``; ``mixcd_class`` = ``strategy=mixcd strategy.by_class=true``). The presets give mixcd and
replay the same memory and the same rehearsed samples per step; naive (no rehearsal) is the reference without
rehearsal. Measured on the side (never fed back to the methods): the samples through every training forward
pass (stream / rehearsed: the compute), and the share of rehearsed samples that were collateral damage when
drawn — right under the model at the start of the stage (an exact no-grad pass over the memory, for this
measurement only), wrong under the model at that step. Writes ``<out>/mixcd.md``, ``mixcd.json`` and
``mixcd.png`` (final accuracy on each stage per method); finished runs are cached in ``<out>/runs/``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

PRESETS = {"lm": "mixcd_lm_tiny", "vision": "mixcd_split_mnist"}
METHODS = {
    "naive": ["strategy=naive"],
    "replay": ["strategy=replay"],
    "mixcd": ["strategy=mixcd"],
    "mixcd_class": ["strategy=mixcd", "strategy.by_class=true"],
}


class Probe:
    """Counts training samples and measures how many rehearsed samples were collateral damage (side measurement)."""

    def __init__(self):
        from clframe.strategy import Strategy

        self.cls, self.stats = Strategy, {}
        self.original = Strategy.before_experience, Strategy.training_step
        self.prior: dict[int, bool] = {}

    def reset(self) -> None:
        self.stats = {"stream": 0, "rehearsed": 0, "rehearsed_cd": 0, "rehearsed_prior_right": 0}

    def __enter__(self):
        before, step = self.original
        probe = self

        @torch.no_grad()
        def _right(strategy, x, y, task) -> torch.Tensor:
            return torch.cat([strategy.correct(x[i : i + 256], y[i : i + 256], task[i : i + 256]).cpu()
                              for i in range(0, len(y), 256)])  # fmt: skip

        def before_experience(self, exp):
            before(self, exp)
            mem = getattr(getattr(self, "buffer", None), "data", None)
            probe.prior = {}
            if mem is not None and len(mem):
                dev = next(self.parameters()).device
                right = _right(self, mem.x.to(dev), mem.y.to(dev), mem.task.to(dev))
                probe.prior = dict(zip(mem.ids.tolist(), right.tolist()))

        def training_step(self, batch, batch_idx):
            probe.stats["stream"] += len(batch["y"])
            if "replay" in batch:
                r = batch["replay"]
                now = _right(self, r["x"], r["y"], r["task"])
                prior = torch.tensor([probe.prior.get(int(i), False) for i in r["ids"]])
                probe.stats["rehearsed"] += len(r["y"])
                probe.stats["rehearsed_prior_right"] += int(prior.sum())
                probe.stats["rehearsed_cd"] += int((prior & ~now).sum())
            return step(self, batch, batch_idx)

        self.cls.before_experience, self.cls.training_step = before_experience, training_step
        return self

    def __exit__(self, *exc):
        self.cls.before_experience, self.cls.training_step = self.original


def one_run(preset: str, method: str, seed: int, out: Path, probe: Probe) -> dict:
    from clframe.config import compose
    from clframe.io import atomic_write_text
    from clframe.runner import run

    done = out / "runs" / f"{preset}_{method}_s{seed}.json"
    if done.is_file():
        return json.loads(done.read_text())
    overrides = [f"experiment={preset}", *METHODS[method], f"seed={seed}"]
    run_dir = out / "runs" / f"{preset}_{method}_s{seed}"
    probe.reset()
    t0 = time.perf_counter()
    result = run(compose([*overrides, f"run_dir={run_dir}", "overwrite=true", "logger=none", "progress_bar=none",
                          "plots=false"]))  # fmt: skip
    R = result["accuracy_matrix"]
    last = len(R) - 1
    row = {
        "command": "clframe run " + " ".join(overrides),
        "R": R,
        "avg_acc": result["metrics"]["cl/avg_acc"],
        "forgetting": result["metrics"]["cl/forgetting"],
        "retention": statistics.mean(R[last][j] for j in range(last)),  # final accuracy on the earlier stages
        "seconds": time.perf_counter() - t0,
        **probe.stats,
    }
    atomic_write_text(done, json.dumps(row))
    return row


def _mean_std(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def table(rows: dict[str, list[dict]], seeds: list[int]) -> list[str]:
    head = rows[next(iter(rows))][0]["command"].split(" strategy=")[0]
    lines = [f"`{head} strategy=<method> seed=<{','.join(map(str, seeds))}>` (mean ± std over seeds)\n",
             "| method | final avg acc | retention of earlier stages | forgetting | stream fwd | rehearsed fwd |"
             " rehearsed: prior-right | rehearsed: collateral damage | s/run |",
             "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for method, runs in rows.items():
        reh = sum(r["rehearsed"] for r in runs)
        share = {
            k: f"{sum(r[k] for r in runs) / reh:.3f}" if reh else "-" for k in ("rehearsed_prior_right", "rehearsed_cd")
        }
        streams = {r["stream"] for r in runs}
        rehearsed = {r["rehearsed"] for r in runs}
        lines.append(
            f"| {method} | {_mean_std([r['avg_acc'] for r in runs])} | {_mean_std([r['retention'] for r in runs])}"
            f" | {_mean_std([r['forgetting'] for r in runs])} | {'/'.join(map(str, sorted(streams)))}"
            f" | {'/'.join(map(str, sorted(rehearsed)))} | {share['rehearsed_prior_right']}"
            f" | {share['rehearsed_cd']} | {statistics.mean(r['seconds'] for r in runs):.0f} |"
        )
    return lines


def plot(results: dict, path: Path) -> None:
    from clframe.plots import _pyplot, _save

    plt = _pyplot()
    fig, axes = plt.subplots(1, len(results), figsize=(5.5 * len(results), 3.6), squeeze=False)
    for ax, (preset, rows) in zip(axes[0], results.items()):
        n_stages = len(next(iter(rows.values()))[0]["R"])
        width = 0.8 / len(rows)
        for k, (method, runs) in enumerate(rows.items()):
            final = torch.tensor([r["R"][-1] for r in runs])
            ax.bar([j + k * width for j in range(n_stages)], final.mean(0).tolist(), width,
                   yerr=final.std(0).tolist() if len(runs) > 1 else None, label=method, capsize=2)  # fmt: skip
        ax.set_xticks([j + 0.4 - width / 2 for j in range(n_stages)], [f"stage {j}" for j in range(n_stages)])
        ax.set_ylabel("final accuracy")
        ax.set_title(f"{preset} (after the last stage)")
        ax.legend(fontsize=8)
    _save(fig, path)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", nargs="+", default=["lm", "vision"], choices=list(PRESETS))
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="vision seeds")
    parser.add_argument("--lm-seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--lm-preset", default=PRESETS["lm"])
    parser.add_argument("--vision-preset", default=PRESETS["vision"])
    parser.add_argument("--out", default="benchmarks/results/mixcd")
    args = parser.parse_args(argv)
    from clframe.io import atomic_write_text

    torch.set_num_threads(1)  # a shared machine
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results: dict[str, dict[str, list[dict]]] = {}
    lines = []
    with Probe() as probe:
        for stream in args.streams:
            preset, seeds = (args.lm_preset, args.lm_seeds) if stream == "lm" else (args.vision_preset, args.seeds)
            for method in args.methods:
                for seed in seeds:
                    row = one_run(preset, method, seed, out, probe)
                    results.setdefault(preset, {}).setdefault(method, []).append(row)
                    print(f"{preset} {method} seed {seed}: avg acc {row['avg_acc']:.3f}, retention"
                          f" {row['retention']:.3f}, {row['seconds']:.0f}s", flush=True)  # fmt: skip
            lines += [f"### {preset}\n", *table(results[preset], seeds), ""]
    atomic_write_text(out / "mixcd.md", "\n".join(lines) + "\n")
    atomic_write_text(out / "mixcd.json", json.dumps(results, indent=1))
    plot(results, out / "mixcd.png")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
