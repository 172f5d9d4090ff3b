"""Multi-stage path dependence on a causal LM (On the Impossibility of Retrain Equivalence in Machine Unlearning).

    python benchmarks/lm_path_dependence.py [--methods ga npo simnpo] [--orders 012 021 102 120 201 210]

``experiment=tofu_paths``: three fine-tuning stages with distinct data (world facts; authors 0-19; authors
20-39) in every order, then local unlearning (no retain term) of the same forget set, authors 36-39, with GA,
NPO and SimNPO. Per order the learning runs once exactly as ``clframe run experiment=tofu_paths
scenario.order=[...] unlearning=<method> unlearning.retain_weight=0`` runs it; each method answers on a copy,
measured by the ``tofu`` evaluator against that order's retrain oracle. Writes ``<out>/paths.md``,
``paths.json`` and ``paths_forget_ll.png`` (forget-set log-likelihood per token over unlearning steps, one
curve per ordering, one panel per method).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from unlearning_table import learn_once, unlearn_copy  # benchmarks/ is on sys.path when run as a script

KEYS = [
    ("forget_prob", "forget prob"),
    ("retain_prob", "retain prob"),
    ("world_facts_prob", "world-facts prob"),
    ("model_utility", "model utility"),
    ("forget_quality_log10", "forget quality (log10 p)"),
    ("cka_oracle/layer_2", "CKA to oracle"),
]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="+", default=["ga", "npo", "simnpo"])
    parser.add_argument("--orders", nargs="+", default=["012", "021", "102", "120", "201", "210"])
    parser.add_argument("--out", default="benchmarks/results/lm_paths")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    import torch

    from clframe.config import compose
    from clframe.io import atomic_write_text
    from clframe.plots import _pyplot, _save

    torch.set_num_threads(2)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results: dict[str, dict[str, dict]] = {}
    for order in args.orders:
        overrides = [
            "experiment=tofu_paths",
            f"scenario.order=[{','.join(order)}]",
            "unlearning.retain_weight=0.0",
            f"seed={args.seed}",
            f"run_dir={out / 'runs' / f'order{order}'}",
            "overwrite=true",
            "logger=none",
            "progress_bar=none",
            "plots=false",
        ]
        t0 = time.perf_counter()
        kwargs = {"oracle_cache": str(out / ".oracle_cache")}
        stream, learned, evaluator, exp = learn_once(compose([*overrides, "unlearning=ga"]), kwargs, "tofu")
        print(f"order {order}: learned in {time.perf_counter() - t0:.0f}s", flush=True)
        for method in args.methods:
            done = out / "runs" / f"order{order}_{method}.json"
            if done.is_file():
                e = json.loads(done.read_text())
            else:
                e = unlearn_copy(compose([*overrides, f"unlearning={method}"]), stream, learned, evaluator, exp)
                atomic_write_text(done, json.dumps(e))
            results.setdefault(method, {})[order] = e
            print(f"  {method}: forget prob {e['unlearn/forget_prob']:.3f}", flush=True)
    lines = ["## Path dependence on a causal LM (experiment=tofu_paths, local unlearning, seed 0)\n"]
    for method, by_order in results.items():
        lines.append(f"### {method}\n")
        lines.append(
            "| order | "
            + " | ".join(f"{label} (unlearned / original / oracle)" for _, label in KEYS[:4])
            + " | "
            + " | ".join(label for _, label in KEYS[4:])
            + " |"
        )
        lines.append("|---" * (len(KEYS) + 1) + "|")
        for order, e in by_order.items():
            cells = [
                " / ".join(f"{e.get(f'{w}/{k}', float('nan')):.3f}" for w in ("unlearn", "original", "oracle"))
                for k, _ in KEYS[:4]
            ]
            cells += [f"{e.get(f'unlearn/{k}', float('nan')):.3f}" for k, _ in KEYS[4:]]
            lines.append(f"| {order} | " + " | ".join(cells) + " |")
        spread = {
            k: statistics.pstdev([e[f"unlearn/{k}"] for e in by_order.values() if f"unlearn/{k}" in e]) for k, _ in KEYS
        }
        lines.append("| spread (std over orders) | " + " | ".join(f"{spread[k]:.3f}" for k, _ in KEYS) + " |\n")
    atomic_write_text(out / "paths.md", "\n".join(lines))
    atomic_write_text(out / "paths.json", json.dumps(results))
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(results), figsize=(4.5 * len(results), 3.8), squeeze=False)
    for ax, (method, by_order) in zip(axes[0], results.items()):
        for order, e in by_order.items():
            curve = e.get("unlearn/curve") or []
            ax.plot([h["step"] for h in curve], [h["forget_ll"] for h in curve], marker=".", label=f"order {order}")
        ax.set_title(f"{method}: forget-set log-likelihood")
        ax.set_xlabel("unlearning step")
        ax.set_ylabel("log p per answer token")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    _save(fig, out / "paths_forget_ll.png")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
